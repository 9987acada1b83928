"""A browser that stops reading, and a backlog of resent events: the latency and memory figures
that tests/test_faults.py and tests/test_live_load.py used to assert (on a shared 2-core machine
those bounds measured the neighbours as much as the server; the tests keep what they check
functionally: every event arrives, in order, and the stuck reader is resynced).

    .venv/bin/python bench/backpressure.py                 # both cases, 3 repeats each
    .venv/bin/python bench/backpressure.py --case stuck --repeats 5

A real server (its own process, a token) on a free port, fed through the trainer's own
IngestClient (what every worker and gradwatch.connect use).

--case stuck: one external run fed 4,000 metrics events of 100 layers (~6 KiB each) at 250/s
  (22 MiB in all, over five times a subscriber's byte cap, hub.QUEUE_BYTES); one browser socket
  that completes its handshake and never reads (a 4 KiB receive window), and one that reads
  everything. Reported: the reading browser's lag (its receive time minus the event's `time`)
  p50/p99/max over every metrics event, and the server's RSS growth over the first and the
  second half of the events (the stuck reader's backlog is capped, so the second half should
  add next to nothing).
--case backlog: six external runs hand the server 8,000 events each at once (512 a message, back
  to back, as workers resending their buffers to a restarted server do), while another process
  polls /api/health every 20 ms on a kept connection. Reported: health's worst and p99 answer
  time, and how long the 48,000 events took to be acknowledged.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from frontend_bench import machine, served  # noqa: E402


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * (len(xs) - 1)))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def server_pid(port: int) -> int:
    """The serving process (bench/frontend_bench.served keeps its Popen to itself)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
                if b"gradwatch.server.cli" in cmd and str(port).encode() in cmd:
                    return int(entry.name)
    raise RuntimeError(f"no server process on port {port}")


def external_run(client: Any, base: str, name: str) -> tuple[str, Any]:
    from gradwatch.worker import IngestClient

    r = client.post("/api/runs", json={"name": name, "external": True, "config": {}})
    r.raise_for_status()
    ingest = IngestClient(base.replace("http", "ws") + f"/api/ingest/{r.json()['id']}", r.json()["token"])
    assert ingest.hello_ready.wait(30) and ingest.hello is not None
    return r.json()["id"], ingest


def metrics(step: int, n: int) -> dict[str, Any]:
    g = [1.0 + (step % 7) / 10 + i / 1000 for i in range(n)]
    return {"type": "metrics", "step": step, "time": time.time(), "loss": 1 / step, "accuracy": 0.5,
            "global_grad_norm": 1.0, "grad_norm": g, "weight_norm": g, "update_ratio": g}


def started(n: int) -> dict[str, Any]:
    layers = [{"name": f"l{i}.weight", "module": "Linear", "shape": [16, 16]} for i in range(n)]
    return {"type": "run.started", "time": time.time(), "layers": layers, "device": "cpu"}


# ---- a browser that stops reading ------------------------------------------------------------


def stuck_socket(port: int, token: str, run_id: str) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall((f"GET /api/stream?runs={run_id}&token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                  "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: every frame after the handshake stays unread
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def reader(url: str, run_id: str, lags: list[float], done: threading.Event) -> None:
    from websockets.sync.client import connect

    with connect(url, open_timeout=10, max_queue=None) as ws:
        while not done.is_set():
            raw = ws.recv(timeout=60)
            now = time.time()
            data = orjson.loads(raw)
            for m in data if isinstance(data, list) else [data]:
                if m.get("run_id") == run_id and m["type"] == "metrics":
                    lags.append(now - m["time"])
                elif m.get("run_id") == run_id and m["type"] == "run.finished":
                    done.set()


def stuck_case(steps: int = 4000, rate: float = 250, layers: int = 100) -> dict[str, Any]:
    with served(Path(tempfile.mkdtemp(prefix="gwbench-empty-"))) as (base, token, client):
        port = int(base.rsplit(":", 1)[1])
        pid = server_pid(port)
        run_id, ingest = external_run(client, base, "fed")
        stuck = stuck_socket(port, token, run_id)
        lags: list[float] = []
        done = threading.Event()
        url = base.replace("http", "ws") + f"/api/stream?runs={run_id}&since={run_id}:0&token={token}"
        thread = threading.Thread(target=reader, args=(url, run_id, lags, done), daemon=True)
        thread.start()
        before = rss_mib(pid)
        ingest.emit(started(layers))
        t0 = time.perf_counter()
        half = None
        for step in range(1, steps + 1):
            ingest.emit(metrics(step, layers))
            if step == steps // 2:
                half = rss_mib(pid)
            delay = t0 + step / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        ingest.emit({"type": "run.finished", "time": time.time(), "status": "completed", "reason": None,
                     "summary": {"step": steps}})
        assert ingest.close(timeout=60)
        assert done.wait(60), "the reading browser never saw the run end"
        end = rss_mib(pid)
        stuck.close()
        assert len(lags) == steps, f"the reader got {len(lags)} of {steps} metrics events"
        return {"p50_ms": pct(lags, 0.5) * 1000, "p99_ms": pct(lags, 0.99) * 1000, "max_ms": max(lags) * 1000,
                "rss_first_half_mib": half - before, "rss_second_half_mib": end - half}


# ---- a backlog of resent events ------------------------------------------------------------------

POLL = """
import sys, time, httpx, orjson
from pathlib import Path
lags = []
with httpx.Client(base_url=sys.argv[1], timeout=30) as h:
    h.get("/api/health")
    print("ready", flush=True)
    while not Path(sys.argv[2]).exists():
        t0 = time.perf_counter()
        assert h.get("/api/health").status_code == 200
        lags.append(time.perf_counter() - t0)
        time.sleep(0.02)
print(orjson.dumps(lags).decode())
"""


def backlog_case(runs: int = 6, per_run: int = 8000, layers: int = 8) -> dict[str, Any]:
    with served(Path(tempfile.mkdtemp(prefix="gwbench-empty-"))) as (base, _token, client):
        clients = [external_run(client, base, f"backlog-{i}") for i in range(runs)]
        stop = Path(tempfile.mkdtemp(prefix="gwbench-poll-")) / "stop"
        poller = subprocess.Popen([sys.executable, "-c", POLL, base, str(stop)], stdout=subprocess.PIPE, text=True)
        assert poller.stdout.readline() == "ready\n"
        t0 = time.perf_counter()
        try:
            for _, c in clients:
                c.emit(started(layers))
                for step in range(1, per_run + 1):
                    c.emit(metrics(step, layers))
            for run_id, c in clients:
                assert c.close(timeout=300), f"run {run_id}: not every event was acknowledged"
            took = time.perf_counter() - t0
        finally:
            stop.touch()
            out, _ = poller.communicate(timeout=60)
        lags = orjson.loads(out)
        for run_id, _ in clients:
            assert client.get(f"/api/runs/{run_id}").json()["last_seq"] == per_run + 1
        return {"health_worst_ms": max(lags) * 1000, "health_p99_ms": pct(lags, 0.99) * 1000, "polls": len(lags),
                "events": runs * (per_run + 1), "ingested_s": took}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--case", choices=("stuck", "backlog", "both"), default="both")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    print(f"{machine()}; load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the start", flush=True)
    results: dict[str, list[dict[str, Any]]] = {}
    for case, fn in (("stuck", stuck_case), ("backlog", backlog_case)):
        if args.case not in (case, "both"):
            continue
        for i in range(args.repeats):
            r = fn()
            results.setdefault(case, []).append(r)
            print(f"{case} #{i + 1}: " + ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in r.items()), flush=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
