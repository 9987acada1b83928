"""Trust boundaries, round two (issue 15), each as the attack that worked, against a real server:
a run's token acts only for its run, the store is private, sessions are per sign-in and need our
own page, memory and disk are bounded, no input makes a handler fail, logs and sockets are bounded.
The browser side (history, the sign-in page, Plotly's text) is in test_trust_browser.py, the
websocket fuzzing in test_fuzz_ws.py."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import stat
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from .conftest import LiveServer, stream_messages, wait_for, worker_pids

FAST = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 40, "eval_every": 20}
LAYERS = [{"name": "fc1.weight", "module": "Linear", "shape": [4, 4]},
          {"name": "fc1.bias", "module": "Linear", "shape": [4]}]
LIMITS = {"GRADWATCH_RUN_MAX_EVENTS": "300", "GRADWATCH_RUN_MAX_BYTES": "60000", "GRADWATCH_MAX_STREAMS": "5",
          "GRADWATCH_MAX_STREAMS_PER_SESSION": "3", "GRADWATCH_HEADER_TIMEOUT_S": "1",
          "GRADWATCH_WORKER_MEMORY": "2G", "GRADWATCH_MAX_CONCURRENT": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("trust") / "data", log_level="info", env=LIMITS).start()
    yield s
    s.stop()


def external(server: LiveServer, name: str = "own") -> tuple[str, str]:
    r = server.client.post("/api/runs", json={"name": name, "external": True, "config": {}})
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["token"]


@contextmanager
def ingest(server: LiveServer, run_id: str, token: str) -> Iterator[ClientConnection]:
    with connect(server.ws_url(f"/api/ingest/{run_id}"), open_timeout=10, max_size=None,
                 additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "hello"
        yield ws


def metrics(seq: int, step: int, n: int = 2) -> dict[str, Any]:
    g = [1.0 + i for i in range(n)]
    return {"type": "metrics", "seq": seq, "step": step, "time": time.time(), "loss": 1.0, "accuracy": 0.5,
            "global_grad_norm": 1.0, "grad_norm": g, "weight_norm": g, "update_ratio": g}


def refused(ws: ClientConnection, events: list[dict[str, Any]]) -> tuple[int, str]:
    """Send a batch the server must refuse: (close code, reason). Before closing it asks the
    worker to stop; it never acknowledges."""
    ws.send(orjson.dumps({"type": "batch", "events": events}))
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            msg = orjson.loads(ws.recv(timeout=10))
            assert msg["type"] != "ack", msg
    return closed.value.rcvd.code, closed.value.rcvd.reason


def no_tracebacks(server: LiveServer) -> None:
    log = server.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-3000:]


# ---- 1. a run's ingest token acts for its run only, and only as a worker ---------------------


def test_a_runs_token_cannot_rewrite_another_run_in_open_dashboards(server: LiveServer) -> None:
    victim = server.create_run({**FAST, "steps": 5}, name="victim")
    server.wait_status(victim["id"], ("completed",))
    attacker, token = external(server, "attacker")
    spoof = {"type": "run.update", "seq": 1, "run": {**victim, "name": "SPOOFED", "status": "failed",
                                                      "last_seq": 10**15}}
    with connect(server.ws_url("/api/stream"), open_timeout=10) as page, ingest(server, attacker, token) as ws:
        code, reason = refused(ws, [spoof])
        assert code == 1008 and "type must be one of" in reason
        # Everything the page got up to the attacker's run ending (the server's own word on it):
        # no record but the server's, none of them spoofed.
        seen = []
        while not any(m.get("type") == "run.update" and m["run"]["id"] == attacker and m["run"]["status"] == "failed"
                      for m in seen):
            seen += stream_messages(page.recv(timeout=10))
    assert not any("SPOOFED" in orjson.dumps(m).decode() for m in seen), seen
    assert server.run(victim["id"])["name"] == "victim" and server.run(victim["id"])["status"] == "completed"
    failed = server.run(attacker)
    assert failed["status"] == "failed" and "run.update" in failed["error"] and "type must be one of" in failed["error"]
    assert "ingest refused" in server.log_text()  # logged, with the reason


@pytest.mark.parametrize("event, why", [
    ({"type": "resync", "seq": 1, "run_id": None}, "type must be one of"),
    ({"type": "run.deleted", "seq": 1}, "type must be one of"),
    ({"type": "totally.new", "seq": 1}, "type must be one of"),
    ({**metrics(1, 1), "run_id": "someone-else"}, "run_id: a worker speaks for its own run only"),
    ({"type": "run.started", "seq": 1, "layers": LAYERS, "run": {"id": "x", "name": "y"}}, "run:"),
    ({"type": "run.finished", "seq": 1, "status": "completed", "source": "server"}, "source"),
    ({"type": "run.started", "seq": 1, "layers": [{"name": "x" * 600, "shape": [1]}]}, "layers[0].name"),
    ({**metrics(1, 1), "grad_norm": [1.0, 2.0, 3.0]}, "as long as each other"),
])
def test_ingest_takes_only_a_workers_events_each_with_its_schema(server: LiveServer, event: dict, why: str) -> None:
    run_id, token = external(server)
    with ingest(server, run_id, token) as ws:
        code, _ = refused(ws, [event])
    assert code == 1008
    run = server.run(run_id)
    assert run["status"] == "failed" and why in run["error"], run["error"]
    assert run["last_seq"] == 1  # the server's run.finished, nothing the worker sent


def test_arrays_are_aligned_with_the_runs_layers_and_an_own_run_id_is_dropped(server: LiveServer) -> None:
    run_id, token = external(server)
    with ingest(server, run_id, token) as ws:
        ws.send(orjson.dumps({"type": "batch", "events": [
            {"type": "run.started", "seq": 1, "layers": LAYERS, "run_id": run_id}, metrics(2, 1)]}))
        assert orjson.loads(ws.recv(timeout=10)) == {"type": "ack", "seq": 2}
        code, _ = refused(ws, [metrics(3, 2, n=3)])  # three values for two layers
    assert code == 1008 and "3 values for 2 layers" in server.run(run_id)["error"]
    # The stored event has no run_id of its own: a resume replays it with exactly one (one
    # message per frame here, the old framing, so the count is of one event's).
    with connect(server.ws_url(f"/api/stream?runs={run_id}&since={run_id}:0&frames=single"),
                 open_timeout=10) as page:
        first = page.recv(timeout=10)
    assert first.count('"run_id"') == 1 and orjson.loads(first)["type"] == "run.started"


# ---- 7. out-of-range integers and odd frames make no handler fail ---------------------------


def test_huge_seqs_and_steps_are_refused_and_stop_still_answers(server: LiveServer) -> None:
    run_id, token = external(server)
    with ingest(server, run_id, token) as ws:
        ws.send(orjson.dumps({"type": "batch", "events": [{"type": "run.started", "seq": 1, "layers": LAYERS}]}))
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ack"
        code, reason = refused(ws, [metrics(2**63 - 1, 1)])
    assert code == 1008 and "seq" in reason
    r = server.client.post(f"/api/runs/{run_id}/stop")
    assert r.status_code == 200 and r.json()["status"] == "failed"  # ended by the refusal, and says so
    for bad, why in [({**metrics(1, 1), "step": {"x": 1}}, "step"), ({**metrics(1, 2**63)}, "step"),
                     ({"type": "run.finished", "seq": 1, "status": "failed", "reason": ["a", "list"]}, "reason"),
                     ({**metrics(1, 1), "loss": "abc"}, "loss")]:
        other, other_token = external(server)
        with ingest(server, other, other_token) as ws:
            assert refused(ws, [bad])[0] == 1008
        assert why in server.run(other)["error"]
        assert server.client.post(f"/api/runs/{other}/stop").status_code == 200
    assert server.client.get("/api/runs").status_code == 200
    no_tracebacks(server)


def test_odd_frames_on_the_browser_stream_close_it_without_a_traceback(server: LiveServer) -> None:
    for frame, code in [(b"\x00\x01binary", 1003), ('{"type": "subscribe", "runs": 123}', 1003),
                        ('{"type": "subscribe", "runs": [{"a": 1}]}', 1003), ("not json", 1003)]:
        with connect(server.ws_url("/api/stream"), open_timeout=10) as ws:
            ws.send(frame)
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    ws.recv(timeout=10)
        assert closed.value.rcvd.code == code, frame
    with connect(server.ws_url("/api/stream"), open_timeout=10) as ws:  # the one message a page sends
        ws.send('{"type": "subscribe", "runs": ["abc"]}')
        ws.send('{"type": "subscribe", "runs": null}')
        ws.ping().wait(10)
    no_tracebacks(server)


# ---- 8. a run's storage is bounded ----------------------------------------------------------


def test_a_run_that_reaches_its_event_limit_ends_failed_saying_so(server: LiveServer) -> None:
    run_id, token = external(server)
    with ingest(server, run_id, token) as ws:
        ws.send(orjson.dumps({"type": "batch", "events": [{"type": "run.started", "seq": 1, "layers": LAYERS}]}))
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ack"
        seq = 1
        with pytest.raises(ConnectionClosed) as closed:
            while True:  # 100 events a batch, until the server says no
                batch = [metrics(seq + 1 + i, seq + i) for i in range(100)]
                ws.send(orjson.dumps({"type": "batch", "events": batch}))
                msg = orjson.loads(ws.recv(timeout=10))
                if msg["type"] == "ack":
                    seq = msg["seq"]
                assert seq < 1000, "the limit never came"
    assert closed.value.rcvd.code == 1008 and "storage limit" in closed.value.rcvd.reason
    run = server.run(run_id)
    assert run["status"] == "failed" and "GRADWATCH_RUN_MAX_EVENTS" in run["error"]
    assert run["last_seq"] <= 300 + 1  # the events it was allowed, and the server's run.finished
    events = server.client.get(f"/api/runs/{run_id}/metrics").json()["events"]
    assert events[-1]["type"] == "run.finished" and "storage limit" in events[-1]["reason"]


def test_a_run_that_reaches_its_byte_limit_ends_failed_saying_so(server: LiveServer) -> None:
    run_id, token = external(server)
    wide = [{"name": f"l{i}.weight", "module": "Linear", "shape": [8, 8]} for i in range(100)]
    with ingest(server, run_id, token) as ws:
        ws.send(orjson.dumps({"type": "batch", "events": [{"type": "run.started", "seq": 1, "layers": wide}]}))
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ack"
        code, reason = refused(ws, [metrics(2 + i, 1 + i, n=100) for i in range(40)])  # ~80 kB > 60 kB
    assert code == 1008 and "bytes" in reason
    assert "GRADWATCH_RUN_MAX_BYTES" in server.run(run_id)["error"]


# ---- 2. the store is private; it keeps digests of ingest tokens ------------------------------


def test_the_data_folder_and_database_are_private_and_hold_no_ingest_token(server: LiveServer) -> None:
    run_id, token = external(server)
    with ingest(server, run_id, token) as ws:
        ws.send(orjson.dumps({"type": "batch", "events": [{"type": "run.started", "seq": 1, "layers": LAYERS}]}))
        assert orjson.loads(ws.recv(timeout=10))["type"] == "ack"
    local = server.create_run({**FAST, "steps": 5})
    server.wait_status(local["id"], ("completed",))
    data = server.data_dir
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    db = data / "gradwatch.sqlite3"
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    assert all(f.exists() for f in files)
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        stored = dict(con.execute("SELECT id, token FROM runs").fetchall())
    from gradwatch.server.store import token_ok

    assert stored[run_id].startswith("sha256:") and token_ok(token, stored[run_id])
    assert all(v.startswith("sha256:") for v in stored.values())
    for f in files:  # the token is nowhere in the files, in any form
        assert token.encode() not in f.read_bytes()


def test_an_older_store_keeps_only_digests_of_its_tokens(tmp_path: Path) -> None:
    from gradwatch.server.store import Store, token_ok

    path = tmp_path / "old.sqlite3"
    Store(path).close()
    with sqlite3.connect(path) as con:  # a row as an older version wrote it: the token in clear
        con.execute("INSERT INTO runs (id, name, status, config, created, token) VALUES "
                    "('r1', 'old', 'completed', '{}', 0, 'clear-token-123')")
    path.chmod(0o644)
    store = Store(path)
    try:
        stored = store.get_run("r1")["token"]
        assert stored.startswith("sha256:") and token_ok("clear-token-123", stored)
        assert not token_ok("clear-token-124", stored)
    finally:
        store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- 3. sessions: random per sign-in, revocable, short-lived, only from our own page --------


def login(server: LiveServer) -> str:
    r = httpx.post(f"{server.url}/api/login", json={"token": server.token})
    assert r.status_code == 204, r.text
    return r.cookies[f"gradwatch-session-{server.port}"]


def as_page(server: LiveServer, value: str, **headers: str) -> int:
    cookie = {"Cookie": f"gradwatch-session-{server.port}={value}"}
    return httpx.get(f"{server.url}/api/runs", headers={**cookie, **headers}).status_code


def test_a_session_is_new_per_sign_in_revocable_and_needs_our_own_page(server: LiveServer) -> None:
    one, two = login(server), login(server)
    assert one != two  # random per sign-in, not a function of the token
    same = {"Sec-Fetch-Site": "same-origin"}
    assert as_page(server, one, **same) == 200 and as_page(server, two, **same) == 200
    # A replay of the cookie alone (curl; what another port on this host received) is nobody,
    # for GET too; so is one a page on another port sends.
    assert as_page(server, one) == 401
    assert as_page(server, one, **{"Sec-Fetch-Site": "same-site"}) == 401
    assert as_page(server, one, Origin=f"http://127.0.0.1:{server.port + 1}") == 401
    assert as_page(server, one, Origin=f"http://127.0.0.1:{server.port}") == 200
    # Signing out ends that session, at once; the other lives on.
    out = httpx.post(f"{server.url}/api/logout", headers={
        "Cookie": f"gradwatch-session-{server.port}={one}", **same})
    assert out.status_code == 204 and "Max-Age=0" in out.headers["set-cookie"]
    assert as_page(server, one, **same) == 401 and as_page(server, two, **same) == 200


def test_a_restart_ends_every_session(tmp_path: Path) -> None:
    s = LiveServer(tmp_path / "data").start()
    try:
        value = login(s)
        assert as_page(s, value, **{"Sec-Fetch-Site": "same-origin"}) == 200
        s.stop()
        s.start()  # the same token, the same port
        assert as_page(s, value, **{"Sec-Fetch-Site": "same-origin"}) == 401
    finally:
        s.stop()


def test_sessions_are_short_lived_and_renewed_by_use() -> None:
    from gradwatch.server.security import SESSION_IDLE_S, Sessions

    now = [1000.0]
    sessions = Sessions(clock=lambda: now[0])
    value = sessions.create()
    assert SESSION_IDLE_S <= 12 * 3600
    now[0] += SESSION_IDLE_S / 8
    assert sessions.check(value) and not sessions.touch(value)  # used: renewed, cookie not due
    now[0] += SESSION_IDLE_S / 4
    assert sessions.check(value) and sessions.touch(value)  # a quarter since the cookie: sent again
    now[0] += SESSION_IDLE_S - 1
    assert sessions.check(value)  # its idle time counts from the last use
    now[0] += 2
    assert not sessions.check(value)  # unused for SESSION_IDLE_S: gone
    code = sessions.link_code()
    assert sessions.use_code(code) and not sessions.use_code(code)  # a sign-in link works once
    old = sessions.link_code(lifetime_s=10)
    now[0] += 11
    assert not sessions.use_code(old)


def test_the_session_cookie_is_short_lived(server: LiveServer) -> None:
    r = httpx.post(f"{server.url}/api/login", json={"token": server.token})
    max_age = next(p for p in r.headers["set-cookie"].split("; ") if p.startswith("Max-Age="))
    assert 0 < int(max_age.split("=")[1]) <= 12 * 3600


# ---- 5. memory: estimated before launch; a stop that gets no step boundary kills ------------


def test_a_run_too_big_for_a_worker_is_refused_naming_the_estimate_and_the_limit(server: LiveServer) -> None:
    r = server.client.post("/api/runs", json={"config": {"model": "cnn", "width": 2048, "batch_size": 4096,
                                                         "depth": 1, "steps": 10}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"][-1] == "batch_size"
    need = re.search(r"needs about ([\d.]+) GiB .* over the limit of 2\.0 GiB per worker", detail["msg"])
    assert need and float(need.group(1)) > 4, detail["msg"]  # a 2 GiB activation tensor, and more
    assert "GRADWATCH_WORKER_MEMORY" in detail["msg"]
    ok = server.client.post("/api/runs", json={"config": {"model": "cnn", "width": 2048, "batch_size": 256,
                                                          "depth": 1, "steps": 1}})
    assert ok.status_code == 201, ok.text  # the same model, a batch that fits
    server.wait_status(ok.json()["id"], ("completed", "failed"), timeout=120)


def test_stop_kills_a_worker_that_reaches_no_step_boundary_within_a_short_grace(server: LiveServer) -> None:
    run = server.create_run({**FAST, "steps": 1_000_000}, name="stuck")
    wait_for(lambda: server.run(run["id"])["summary"].get("step", 0) > 2, what="the run to train")
    (pid,) = worker_pids(run["id"])
    os.kill(pid, signal.SIGSTOP)  # a step that never ends (as one of a huge batch, or a hang)
    try:
        asked = time.monotonic()
        assert server.client.post(f"/api/runs/{run['id']}/stop").status_code == 200
        done = server.wait_status(run["id"], ("stopped",), timeout=8)  # not the 10 s of a stepping worker
        took = time.monotonic() - asked
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)  # it is dead by now
    assert "no step boundary within 2 s" in done["error"] and took < 8, (took, done["error"])
    wait_for(lambda: not worker_pids(run["id"]), timeout=10, what="the worker to be gone")


# ---- 9. logs: a token is hidden however its name is spelled; one spelling is accepted -------


def test_an_encoded_token_parameter_is_neither_accepted_nor_logged(server: LiveServer) -> None:
    for name in ("%74oken", "t%6Fken", "TOKEN"):
        url = f"ws://127.0.0.1:{server.port}/api/stream?{name}={server.token}"
        with pytest.raises(InvalidStatus) as e, connect(url, open_timeout=10):
            pass
        assert e.value.response.status_code == 403
        httpx.get(f"{server.url}/api/health?{name}={server.token}")
    wait_for(lambda: "/api/health?TOKEN=" in server.log_text(), timeout=5, what="the access log lines")
    assert server.token not in server.log_text()


# ---- 10. sockets and half-sent requests are bounded ------------------------------------------


def test_stream_sockets_are_capped_per_session_and_in_all(server: LiveServer) -> None:
    def close_code(ws: ClientConnection) -> int | None:
        try:
            ws.recv(timeout=0.5)
        except ConnectionClosed as closed:
            return closed.rcvd.code
        except TimeoutError:
            return None
        return None

    bearer = {"Authorization": f"Bearer {server.token}"}
    url = server.ws_url("/api/stream", auth=False)
    with ExitStack() as stack:
        opened = [stack.enter_context(connect(url, open_timeout=10, additional_headers=bearer)) for _ in range(3)]
        assert [close_code(ws) for ws in opened] == [None, None, None]
        with connect(url, open_timeout=10, additional_headers=bearer) as extra:
            assert close_code(extra) == 1013  # a fourth for the same credentials
        origin = f"http://127.0.0.1:{server.port}"
        browsers = [stack.enter_context(connect(url, open_timeout=10, origin=origin, additional_headers={
            "Cookie": f"gradwatch-session-{server.port}={login(server)}"})) for _ in range(3)]
        assert [close_code(ws) for ws in browsers] == [None, None, 1013]  # 5 in all
    wait_for(lambda: server.client.get("/api/health").status_code == 200)
    with connect(url, open_timeout=10, additional_headers=bearer) as again:  # closed ones are freed
        assert close_code(again) is None


def test_a_half_sent_request_head_is_closed_after_the_header_timeout(server: LiveServer) -> None:
    socks = []
    try:
        for _ in range(50):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and then nothing
            socks.append(s)
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # not even that
        socks.append(idle)
        started = time.monotonic()
        for s in socks:
            assert s.recv(1024) == b""  # closed by the server (a timeout here raises)
        assert time.monotonic() - started < 5
    finally:
        for s in socks:
            s.close()
    # A request that is sent whole is answered, as ever.
    assert server.client.get("/api/health").status_code == 200


# ---- 11 and the rest ------------------------------------------------------------------------


def test_patch_takes_no_null(server: LiveServer) -> None:
    run = server.create_run({**FAST, "steps": 1_000_000}, name="busy-1")
    other = server.create_run({**FAST, "steps": 1_000_000}, name="busy-2")
    queued = server.create_run(FAST, name="waits")  # two slots, both taken
    try:
        assert server.run(queued["id"])["status"] == "queued"
        r = server.client.patch(f"/api/runs/{queued['id']}", json={"lr": None})
        assert r.status_code == 422, r.text
        assert server.run(queued["id"])["config"]["lr"] == FAST.get("lr", 0.05)
        assert server.client.patch(f"/api/runs/{queued['id']}", json={"lr": 0.01}).status_code == 200
    finally:
        for r in (run, other, queued):
            server.client.post(f"/api/runs/{r['id']}/stop")


def test_no_scripts_from_elsewhere_run_in_our_origin(server: LiveServer) -> None:
    for path in ("/docs", "/redoc"):
        assert server.client.get(path).status_code == 404  # they load scripts from a public CDN
    csp = httpx.get(f"{server.url}/login").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'self'" in csp and "frame-ancestors 'none'" in csp


# ---- the page's pure functions, under node --------------------------------------------------

NODE_CHECKS = r"""
import assert from 'node:assert/strict';
import { safeText, safeFigure } from './frontend/js/plotsafe.js';
import { safeNext, target } from './frontend/js/login.js';

assert.equal(safeText('<a href="x">y</a>'), '&lt;a href="x">y&lt;/a>');
assert.equal(safeText('<span style="font-size:80px">z</span>'), '&lt;span style="font-size:80px">z&lt;/span>');
assert.equal(safeText('a<br>b <b>c</b> <extra></extra> 1 < 2'), 'a<br>b <b>c</b> <extra></extra> 1 &lt; 2');
assert.equal(safeText('<b style="x">'), '&lt;b style="x">');
const trace = { name: 'plain', x: [1, 2], y: ['<a href=1>', 'ok'], marker: { color: '#fff' } };
const safe = safeFigure([trace]);
assert.equal(safe[0].y[0], '&lt;a href=1>');
assert.equal(trace.y[0], '<a href=1>');  // the caller's data is left as it was
const clean = [{ name: 'plain', x: [1, 2] }];
assert.equal(safeFigure(clean), clean);  // nothing to change: the same objects

assert.equal(safeNext('/?runs=a'), '/?runs=a');
for (const bad of ['//evil.example/', 'https://evil.example/', '/\\evil.example', null, 'x']) {
  assert.equal(safeNext(bad), '/');
}
assert.equal(target('?next=%2F%3Fruns%3Da', '#code=c&focus=a'), '/?runs=a&focus=a');
assert.equal(target('', '#code=c&token=t'), '/');
console.log('ok');
"""


def test_plotly_text_escaping_and_the_login_redirect_as_pure_functions() -> None:
    import shutil
    import subprocess

    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is required in CI")
        pytest.skip("node is not installed")
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([node, "--input-type=module", "-e", NODE_CHECKS], cwd=root, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
