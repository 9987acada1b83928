"""Faults of the machine under the server (issue 19): a damaged or read-only database, a full
disk, a double launch, a dead pre-importing parent. Each test runs the real `gradwatch serve`
and says what gradwatch promises (docs/operations.md lists them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from gradwatch.server.store import Store
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import ROOT, LiveServer, free_port, wait_for, worker_pids

DB = "gradwatch.sqlite3"
PAGE = 4096


def serve(data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`gradwatch serve` on a data dir it should refuse: it must exit by itself."""
    env = {**os.environ, "GRADWATCH_TOKEN": "a-test-token-1234"}
    return subprocess.run([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(free_port()),
                           "--data-dir", str(data_dir)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def fill(store: Store, run_id: str, steps: int) -> None:
    """A run with `steps` metrics events of 64 layers (about 1.5 pages of database each)."""
    store.create_run({"id": run_id, "name": run_id, "status": "completed", "config": {}, "created": 1.0,
                      "token": "sha256:0"})
    for i in range(0, steps, 50):
        store.append_events(run_id, [{"type": "metrics", "seq": s + 1, "step": s, "loss": 1.0,
                                      "grad_norm": [0.5] * 64, "weight_norm": [1.0] * 64,
                                      "update_ratio": [1e-3] * 64, "note": "x" * 300}
                                     for s in range(i, min(i + 50, steps))])


def checkpointed(path: Path) -> bytes:
    """The database file with everything in it (the WAL folded in)."""
    store = Store(path)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    return path.read_bytes()


def assert_refused(out: subprocess.CompletedProcess, path: Path, *words: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert str(path) in lines[0] and all(w in lines[0] for w in words), lines[0]


# ---- item 4: a damaged database --------------------------------------------------------------


def test_a_database_with_overwritten_pages_is_refused_at_start_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(data / DB)
    fill(store, "a", 600)
    store.close()
    image = bytearray(checkpointed(data / DB))
    pages = len(image) // PAGE
    for n in (pages // 3, pages // 2, 2 * pages // 3):  # three pages in the middle, garbage
        image[n * PAGE:(n + 1) * PAGE] = os.urandom(PAGE)
    (data / DB).write_bytes(image)
    assert_refused(serve(data), data / DB, "damaged", "backup", ".recover")


def test_a_torn_copy_and_a_garbage_file_are_refused_at_start(tmp_path: Path) -> None:
    """A copy taken without its -wal while a checkpoint was writing: half the pages of one state,
    half of an earlier one. And a file that is no database at all (was a 44-line traceback)."""
    data = tmp_path / "data"
    data.mkdir()
    store = Store(data / DB)
    fill(store, "a", 1000)
    store.close()
    before = checkpointed(data / DB)
    store = Store(data / DB)
    store.delete_run("a")
    fill(store, "b", 1500)
    store.close()
    after = checkpointed(data / DB)
    half = len(after) // PAGE // 2 * PAGE
    (data / DB).write_bytes(after[:half] + before[half:len(after)] + after[len(before):])
    assert_refused(serve(data), data / DB, "damaged")

    (data / DB).write_bytes(b"not a database, " * 4096)
    assert_refused(serve(data), data / DB, "damaged")


def test_health_has_an_integrity_line(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        assert server.client.get("/api/health").json()["integrity"] == "ok"
    finally:
        server.stop()


def damage_table(path: Path, table: str) -> None:
    """Damage one table of a live database the way a bad sector would: its root page overwritten
    on disk. The WAL is folded in first (so the page is read from the file, not the log), and a
    last write from here makes every other connection drop its page cache. Call it with the
    database's writers paused: the other tables stay readable and writable."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        root = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0, "the checkpoint could not finish"
        with open(path, "r+b") as f:
            f.seek((root - 1) * PAGE)
            f.write(b"\xff" * PAGE)
        db.execute("UPDATE groups SET name = name")  # a commit: the server's connections reread pages
        db.execute("CREATE TABLE IF NOT EXISTS damage_marker (x)")
    finally:
        db.close()


def test_a_write_that_finds_damage_ends_the_run_failed_and_health_says_so(tmp_path: Path) -> None:
    """Item 4: the per-step table is damaged under a running server. The worker's next batch
    cannot be stored: the run ends `failed` with a reason naming the store (it does not stay
    `running`), health's integrity line says `damaged`, and the server keeps answering."""
    server = LiveServer(tmp_path / "data").start()
    try:
        run = server.create_run(FOREVER, name="damaged under it")
        wait_for(lambda: server.run(run["id"])["summary"].get("step", 0) > 3, timeout=120, what="the run to train")
        pids = worker_pids(run["id"])
        for pid in pids:  # no write in flight while the page is overwritten
            os.kill(pid, signal.SIGSTOP)
        try:
            damage_table(tmp_path / "data" / DB, "series")
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGCONT)
        ended = server.wait_status(run["id"], ("failed", "completed", "stopped"), timeout=30)
        assert ended["status"] == "failed", ended
        assert "store" in ended["error"] and "malformed" in ended["error"], ended["error"]
        health = server.client.get("/api/health").json()
        assert health["integrity"].startswith("damaged"), health
        assert server.client.get("/api/runs").status_code == 200  # still serving
        wait_for(lambda: not worker_pids(run["id"]), timeout=30, what="the run's worker to end")
    finally:
        server.stop()


# ---- item 5: a read-only database ----------------------------------------------------------


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """The file read-only, in a folder that stays writable: as root (CI) a read-only bind mount of
    the file (root writes through any file mode), unmounted after; otherwise mode 0400."""
    if os.geteuid() != 0:
        path.chmod(0o400)
        try:
            yield
        finally:
            path.chmod(0o600)
        return
    if shutil.which("mount") is None:
        pytest.skip("no mount(8) to make a read-only file as root")
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_read_only_database_file_is_refused_at_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = Store(data / DB)
    fill(store, "a", 10)
    store.close()
    checkpointed(data / DB)
    with read_only(data / DB):
        assert os.access(data, os.W_OK) and not os.access(data / DB, os.W_OK)
        assert_refused(serve(data), data / DB, "read-only", "writable")


# ---- item 6: smaller ones -------------------------------------------------------------------

FOREVER = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 1_000_000, "eval_every": 0}


def test_runs_active_counts_a_running_connected_run_once(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        run = server.create_run(FOREVER, name="counted")
        wait_for(lambda: server.run(run["id"])["summary"].get("step", 0) > 3, what="the run to train")
        health = server.client.get("/api/health").json()
        assert health["runs_active"] == 1, health
        server.client.post(f"/api/runs/{run['id']}/stop")
        server.wait_status(run["id"], ("stopped",))
        wait_for(lambda: server.client.get("/api/health").json()["runs_active"] == 0, what="no run active")
    finally:
        server.stop()


def test_an_export_whose_download_is_cut_says_so_in_one_line(tmp_path: Path) -> None:
    """A server that promises 100,000 bytes and closes after 10: `gradwatch export` says the
    answer was cut off, exit 2, no traceback, and writes no file."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def answer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                         b"Content-Length: 100000\r\n\r\n{\"seq\": 1}")
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    out_file = tmp_path / "run.jsonl"
    try:
        out = subprocess.run([sys.executable, "-m", "gradwatch.server.cli", "export", "abcd1234", "--server",
                              f"http://127.0.0.1:{listener.getsockname()[1]}", "--token", "x" * 16,
                              "--out", str(out_file)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        thread.join(10)
        listener.close()
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "cut off after 10 bytes" in out.stderr, out.stderr
    assert not out_file.exists()


# ---- item 1: a full disk ----------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs of its own, unmounted after (mounting needs root: CI runs as root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "gradwatch-test", str(disk)], check=True)
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)]).returncode:
            subprocess.run(["umount", "-l", str(disk)], check=True)  # busy still: detach it anyway


def fill_up(disk: Path) -> Path:
    """Write a file until the file system has no room left."""
    filler = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with contextlib.suppress(OSError), open(filler, "wb") as f:
        while True:
            f.write(chunk)
            f.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as f:  # and the last partial MiB
        while True:
            f.write(b"\0" * 4096)
            f.flush()
    return filler


def test_a_full_disk_is_reported_deletes_work_and_the_run_goes_on_when_room_returns(small_disk: Path) -> None:
    server = LiveServer(small_disk).start()  # its log goes beside the mount, not on it
    try:
        done = server.create_run({**FOREVER, "steps": 200}, name="to delete")
        server.wait_status(done["id"], ("completed",))
        run = server.create_run(FOREVER, name="through a full disk")
        dies = server.create_run(FOREVER, name="its worker dies while the disk is full")
        for r in (run, dies):
            wait_for(lambda r=r: server.run(r["id"])["summary"].get("step", 0) > 10, what="the runs to train")
        dying = worker_pids(dies["id"])
        filler = fill_up(small_disk)
        wait_for(lambda: server.client.get("/api/health").json()["writes"] != "ok", timeout=30,
                 what="health to report failing writes")
        health = server.client.get("/api/health").json()
        assert health["writes"].startswith("disk full"), health
        view = server.run(run["id"])
        assert view["status"] == "running" and "disk full" in view["error"], view
        # Never a bare 500: a new run is refused with a 507 saying why; a delete works (the reserve).
        r = server.client.post("/api/runs", json={"config": FOREVER})
        assert r.status_code in (201, 507), r.text
        if r.status_code == 507:
            assert "disk is full" in r.json()["detail"]
        else:
            server.client.delete(f"/api/runs/{r.json()['id']}")
        r = server.client.delete(f"/api/runs/{done['id']}")
        assert r.status_code == 204, r.text
        assert server.client.get(f"/api/runs/{done['id']}").status_code == 404
        assert server.run(run["id"])["status"] == "running"  # the delete killed nobody
        # A worker that dies meanwhile: its run ends (the reserve holds its final status).
        os.kill(dying[0], signal.SIGKILL)
        ended = server.wait_status(dies["id"], ("failed",), timeout=15)
        assert "SIGKILL" in ended["error"], ended
        # Room returns: the run goes on by itself, and nothing the worker sent is missing.
        stuck_at = server.run(run["id"])["summary"]["step"]
        filler.unlink()
        wait_for(lambda: server.client.get("/api/health").json()["writes"] == "ok", timeout=30,
                 what="writes to succeed again")
        wait_for(lambda: server.run(run["id"])["summary"]["step"] > stuck_at + 50, timeout=30,
                 what="the run to go on")
        assert server.run(run["id"]).get("error") is None
        server.client.post(f"/api/runs/{run['id']}/stop")
        server.wait_status(run["id"], ("stopped",))
        hist = server.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()
        seqs = sorted(hist["seq"] + [e["seq"] for e in hist["events"]])
        assert seqs == list(range(1, seqs[-1] + 1))  # no gap, no duplicate
        assert "cannot rollback" not in server.log_text()
    finally:
        server.stop()


# ---- item 2: one worker per run, across a crash ------------------------------------------------


def children(pid: int, marker: bytes) -> list[int]:
    """Live processes whose parent is `pid` and whose command line holds `marker`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if stat[0] != "Z" and int(stat[1]) == pid and marker in cmd:
            out.append(int(entry.name))
    return out


def test_a_server_killed_between_the_launch_record_and_the_process_start_never_launches_twice(
        tmp_path: Path) -> None:
    """The pre-forking parent is frozen, so the launch is recorded but its process not started;
    the server is killed there and restarted on the same port; then the parent wakes. Whether the
    request reached it before the kill or not, the restarted server never launches the run again:
    it adopts the worker the parent starts, or, when none comes within the reattach grace, fails
    the run saying so. Never two workers, never two `run.started`."""
    first = LiveServer(tmp_path / "data").start()
    zygote = wait_for(lambda: children(first.proc.pid, b"gradwatch.zygote"), what="the pre-forking parent")[0]
    again = None
    try:
        warm = first.create_run({**FOREVER, "steps": 5}, name="the parent is ready")
        first.wait_status(warm["id"], ("completed",))
        os.kill(zygote, signal.SIGSTOP)
        run = first.create_run(FOREVER, name="launched once")
        wait_for(lambda: first.run(run["id"])["status"] == "running", timeout=10,
                 what="the launch to be recorded before the process starts")
        assert worker_pids(run["id"]) == []
        first.stop(signal.SIGKILL)
        again = LiveServer(tmp_path / "data", port=first.port, token=first.token,
                           env={"GRADWATCH_REATTACH_GRACE_S": "3"}).start()
        os.kill(zygote, signal.SIGCONT)  # it forks the worker it was asked for, if the request came
        seen: set[int] = set()

        def settled() -> dict | None:
            pids = worker_pids(run["id"])
            assert len(pids) <= 1, f"two workers for one run: {pids}"
            seen.update(pids)
            view = again.run(run["id"])
            return view if view["status"] == "failed" or view["summary"].get("step", 0) > 30 else None
        view = wait_for(settled, timeout=60, what="the run to be adopted or failed")
        if view["status"] == "failed":
            assert seen == set() and "did not reconnect" in view["error"], (seen, view)
        else:
            assert len(seen) == 1 and len(worker_pids(run["id"])) == 1
            again.client.post(f"/api/runs/{run['id']}/stop")
            again.wait_status(run["id"], ("stopped",))
        events = again.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()["events"]
        assert [e["type"] for e in events].count("run.started") <= 1
        assert len(seen) == 0 or [e["type"] for e in events].count("run.started") == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(zygote, signal.SIGCONT)
            os.kill(zygote, signal.SIGKILL)
        if again is not None:
            again.stop()
        first.stop()


def test_a_second_worker_connection_for_a_run_is_refused(tmp_path: Path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        r = server.client.post("/api/runs", json={"name": "own loop", "config": FOREVER, "external": True})
        assert r.status_code == 201, r.text
        run = r.json()
        url = server.ws_url(f"/api/ingest/{run['id']}")
        headers = {"Authorization": f"Bearer {run['token']}"}
        with connect(url, additional_headers=headers, open_timeout=10) as one:
            assert orjson.loads(one.recv(timeout=10))["type"] == "hello"
            with connect(url, additional_headers=headers, open_timeout=10) as two:
                with pytest.raises(ConnectionClosed) as closed:
                    two.recv(timeout=10)
                assert closed.value.rcvd.code == 1008 and "another worker" in closed.value.rcvd.reason
            one.send(orjson.dumps({"type": "heartbeat"}))  # the first is untouched
            assert server.run(run["id"])["status"] == "running"
    finally:
        server.stop()


# ---- item 3: the pre-forking parent dies, the server is PID 1 -----------------------------------


class Pid1Server(LiveServer):
    """The server as process 1 of its own PID namespace, as in a container run without an init
    (`docker run` without --init): orphaned processes are re-parented to it."""

    def start(self) -> Pid1Server:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env, "GRADWATCH_TOKEN": self.token}
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--mount-proc", "--kill-child=SIGTERM", sys.executable, "-m", "gradwatch.server.cli",
             "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), "--log-level", self.log_level],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        wait_for(self._healthy, timeout=60, what=f"server on port {self.port} to answer /api/health")
        return self


def zombies_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError, IndexError):
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if entry.name.isdigit() and stat[0] == "Z" and int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def test_workers_of_a_dead_pre_forking_parent_are_reaped_and_the_queue_goes_on_with_the_server_as_pid_1(
        tmp_path: Path) -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a PID namespace needs root and unshare(1)")
    server = Pid1Server(tmp_path / "data", env={"GRADWATCH_MAX_CONCURRENT": "2"}).start()
    pid1 = None
    try:
        pid1 = wait_for(lambda: children(server.proc.pid, b"gradwatch.server.cli"),
                        what="the server in its namespace")[0]
        zygote = wait_for(lambda: children(pid1, b"gradwatch.zygote"), what="the pre-forking parent")[0]
        runs = [server.create_run(FOREVER, name=f"slot {i}") for i in range(2)]
        for run in runs:
            wait_for(lambda run=run: server.run(run["id"])["summary"].get("step", 0) > 5, what="both to train")
        waiting = server.create_run({**FOREVER, "steps": 30}, name="queued")
        assert server.run(waiting["id"])["status"] == "queued"
        workers = [pid for run in runs for pid in worker_pids(run["id"])]
        assert len(workers) == 2
        os.kill(zygote, signal.SIGKILL)  # its workers are re-parented to the server, process 1
        wait_for(lambda: zygote not in children(pid1, b"gradwatch.zygote"), what="the parent gone")
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        for run in runs:
            failed = server.wait_status(run["id"], ("failed",), timeout=15)
            assert "SIGKILL" in failed["error"] or "ended" in failed["error"], failed
        server.wait_status(waiting["id"], ("completed",), timeout=30)  # the slots came back
        wait_for(lambda: not zombies_of(pid1), timeout=10, what="no zombie left under the server")
        restarted = wait_for(lambda: children(pid1, b"gradwatch.zygote"), timeout=60, what="a new pre-forking parent")
        assert zygote not in restarted
        wait_for(lambda: "pre-forking launcher exited" in server.log_text(), timeout=5, what="the log to say so")
    finally:
        server.stop()
        if pid1 is not None:  # a server that did not stop: ending process 1 ends its whole namespace
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid1, signal.SIGKILL)
