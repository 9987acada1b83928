"""Faults of the machine under the server (issue 19): a damaged or read-only database, a full
disk, a double launch, a dead pre-importing parent. Each test runs the real `gradwatch serve`
and says what gradwatch promises (docs/operations.md lists them)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.store import Store

from .conftest import ROOT, LiveServer, free_port, wait_for

DB = "gradwatch.sqlite3"
PAGE = 4096


def serve(data_dir: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """`gradwatch serve` on a data dir it should refuse: it must exit by itself."""
    env = {**os.environ, "GRADWATCH_TOKEN": "a-test-token-1234"}
    return subprocess.run([sys.executable, "-m", "server.cli", "serve", "--port", str(free_port()),
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
        out = subprocess.run([sys.executable, "-m", "server.cli", "export", "abcd1234", "--server",
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
        wait_for(lambda: server.run(run["id"])["summary"].get("step", 0) > 10, what="the run to train")
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
