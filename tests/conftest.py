"""Shared fixtures: a real gradwatch server (uvicorn in its own process, on a free port, with
real worker processes) and helpers that wait on conditions instead of sleeping."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Poll until predicate() is truthy; returns its value or fails the test with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what or predicate}")
        time.sleep(interval)


def stream_messages(raw: str | bytes) -> list[dict[str, Any]]:
    """The messages of one /api/stream frame: a JSON array of them (one object with ?frames=single)."""
    import orjson

    data = orjson.loads(raw)
    return data if isinstance(data, list) else [data]


class StreamReader:
    """/api/stream read one message at a time, whatever the framing."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buffer: list[dict[str, Any]] = []

    def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        while not self.buffer:
            self.buffer = stream_messages(self.ws.recv(timeout=timeout))
        return self.buffer.pop(0)


@dataclass
class LiveServer:
    data_dir: Path
    port: int = field(default_factory=free_port)
    # Auth is always on: every test server has its own token, and `client` sends it.
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    env: dict[str, str] = field(default_factory=dict)
    log_level: str = "warning"  # "info" adds uvicorn's access log
    proc: subprocess.Popen | None = None
    client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env["GRADWATCH_TOKEN"] = self.token
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(self.port),
             "--data-dir", str(self.data_dir), "--log-level", self.log_level],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        # The client lets an idle connection go well before the server does (its header timeout),
        # as a client must: a server with GRADWATCH_HEADER_TIMEOUT_S=1 closes at 1 s.
        expiry = min(5.0, float(self.env.get("GRADWATCH_HEADER_TIMEOUT_S", 10)) / 2)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30,
                                   limits=httpx.Limits(keepalive_expiry=expiry))
        wait_for(self._healthy, timeout=60, what=f"server on port {self.port} to answer /api/health")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"server exited with {self.proc.returncode}: {self.log_text()[-2000:]}")
        try:
            return self.client.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def log_text(self) -> str:
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.client:
            self.client.close()
        self.log.close()

    # ---- helpers used by many tests ----

    def create_run(self, config: dict[str, Any] | None = None, name: str | None = None) -> dict[str, Any]:
        r = self.client.post("/api/runs", json={"name": name, "config": config or {}})
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, run_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, run_id: str, statuses: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(self.run(run_id)),
                        timeout=timeout, interval=0.1, what=f"run {run_id} to become {'/'.join(statuses)}")

    @property
    def browser_url(self) -> str:
        """What a person opens: a one-time sign-in link (`/login#code=…`, as `gradwatch serve`
        prints), which signs the browser in and opens the dashboard. View state may follow as
        `&runs=a,b`: the page carries it over."""
        r = self.client.post("/api/login/links")
        assert r.status_code == 201, r.text
        return self.url + r.json()["url"]

    def ws_url(self, path: str, auth: bool = True) -> str:
        """A websocket URL; with auth, carrying ?token= (as non-browser clients may)."""
        if auth and not path.startswith("/api/ingest/"):
            path += ("&" if "?" in path else "?") + f"token={self.token}"
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = LiveServer(tmp_path_factory.mktemp("server") / "data").start()
    yield server
    server.stop()


def worker_pids(run_id: str) -> list[int]:
    """PIDs of the worker processes training run_id (found through /proc, Linux only): a worker
    forked by the zygote is named gw-<run id>; a plain one has the run id on its command line."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state == "Z":
            continue  # exited, not yet reaped
        if comm == f"gw-{run_id}"[:15] or (b"gradwatch.worker" in cmd and run_id.encode() in cmd):
            pids.append(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def _denormals_back() -> Iterator[None]:
    """train() in this process flushes denormal floats to zero (trainer/loop.py: they are slow on
    CPUs), a setting of the whole process; put it back so later tests (hypothesis's float
    strategies refuse to run under it) see the default."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_flush_denormal(False)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for a train() in this process: what the presets' claims were measured
    with (a run on the edge of chaos, lr 3.0 with BN, takes another path when its sums are reduced
    in another order), and on 2 shared cores a second thread mostly waits for the first."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
