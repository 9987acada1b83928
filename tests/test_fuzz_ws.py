"""Fuzzing the websockets (issue 15), as test_fuzz.py fuzzes the HTTP routes: hypothesis sends what
a broken or hostile worker or page might, to a real server, and every answer must be one the
protocol documents: an ack, or the worker asked to stop and the socket closed with 1003, 1008 or
1009 (ingest); the socket going on, or closed with 1003 or 1009 (the browser stream). No handler
may fail: the server's log holds no traceback at the end, and it answers /api/health throughout."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import LiveServer

WORKER_TYPES = ("run.started", "metrics", "alert", "alert.end", "intervention", "run.finished", "dropped")
SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

# JSON values orjson can write: integers within 64 bits, finite floats.
SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner,
                                                                                          max_size=5), max_leaves=20)
FIELDS = ["step", "time", "loss", "accuracy", "global_grad_norm", "grad_norm", "weight_norm", "update_ratio",
          "val_loss", "stats", "layers", "device", "n_params", "config", "n_classes", "kind", "message", "episode",
          "layer", "value", "top", "field", "old", "new", "source", "status", "reason", "summary", "count",
          "first_step", "last_step", "run_id", "run", "peak_step"]
LAYERS = [{"name": "a.weight", "module": "Linear", "shape": [2, 2]},
          {"name": "a.bias", "module": "Linear", "shape": [2]}]


@st.composite
def events(draw: Any) -> dict[str, Any]:
    """An event: often nearly right (a real type, a plausible seq, fields a worker sends), with
    any of its values replaced by anything."""
    e: dict[str, Any] = {"type": draw(st.sampled_from([*WORKER_TYPES, "run.update", "resync", "run.deleted", "x"])
                                      | st.text(max_size=10)),
                         "seq": draw(st.integers(1, 4) | st.integers(-(2**63), 2**64 - 1) | JSON)}
    if e["type"] == "metrics" and draw(st.booleans()):
        e.update(step=draw(st.integers(0, 10)), loss=0.5, grad_norm=[1.0, 2.0], weight_norm=[1.0, 1.0],
                 update_ratio=[0.1, 0.1])
    if e["type"] == "run.started" and draw(st.booleans()):
        e["layers"] = LAYERS
    for k in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        e[k] = draw(JSON)
    return e


FRAMES = (st.lists(events(), min_size=1, max_size=4).map(lambda es: orjson.dumps({"type": "batch", "events": es}))
          | st.binary(max_size=100) | st.text(max_size=100).map(str.encode)
          | JSON.map(lambda v: orjson.dumps({"type": "batch", "events": v})))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("fuzz-ws") / "data").start()
    yield s
    s.stop()
    log = s.log_text()
    assert "Traceback" not in log and "Exception in ASGI application" not in log, log[-4000:]


@SETTINGS
@given(frames=st.lists(FRAMES, min_size=1, max_size=3))
def test_ingest_answers_anything_with_an_ack_or_a_documented_close(server: LiveServer, frames: list[bytes]) -> None:
    r = server.client.post("/api/runs", json={"name": "fuzz", "external": True, "config": {}})
    assert r.status_code == 201, r.text
    run_id, token = r.json()["id"], r.json()["token"]
    try:
        with connect(server.ws_url(f"/api/ingest/{run_id}"), open_timeout=10, max_size=None,
                     additional_headers={"Authorization": f"Bearer {token}"}) as ws:
            assert orjson.loads(ws.recv(timeout=10))["type"] == "hello"
            for frame in frames:
                ws.send(frame)
                try:
                    msg = orjson.loads(ws.recv(timeout=10))
                except ConnectionClosed as closed:
                    assert closed.rcvd is not None and closed.rcvd.code in (1003, 1008, 1009), closed
                    assert server.run(run_id)["status"] == "failed"  # and it says why
                    return
                if msg["type"] == "control":  # a refusal: the worker is asked to stop, then closed
                    assert msg == {"type": "control", "stop": True}
                    with pytest.raises(ConnectionClosed) as closed:
                        ws.recv(timeout=10)
                    assert closed.value.rcvd.code in (1003, 1008, 1009)
                    assert "the server refused" in server.run(run_id)["error"]
                    return
                assert msg["type"] == "ack" and isinstance(msg["seq"], int), msg
    finally:
        assert server.client.get("/api/health").status_code == 200
        assert server.client.get(f"/api/runs/{run_id}/metrics").status_code == 200
        assert server.client.delete(f"/api/runs/{run_id}").status_code == 204


STREAM_FRAMES = (st.binary(max_size=100) | st.text(max_size=100)
                 | JSON.map(lambda v: orjson.dumps({"type": "subscribe", "runs": v}).decode())
                 | JSON.map(lambda v: orjson.dumps(v).decode()))


@SETTINGS
@given(frames=st.lists(STREAM_FRAMES, min_size=1, max_size=3), query=st.text(max_size=30))
def test_the_browser_stream_answers_anything_by_going_on_or_a_documented_close(
        server: LiveServer, frames: list[Any], query: str) -> None:
    url = server.ws_url("/api/stream?" + orjson.dumps(query).decode()[1:-1].replace("#", "")) \
        if query.isprintable() and query.isascii() and " " not in query else server.ws_url("/api/stream")
    try:
        ws = connect(url, open_timeout=10, max_size=None)
    except Exception:  # noqa: BLE001 - a query the client or server refuses outright is an answer too
        return
    with ws:
        for frame in frames:
            try:
                ws.send(frame)
                ws.recv(timeout=0.2)  # a message (live events) or nothing: it is still there
            except TimeoutError:
                continue
            except ConnectionClosed as closed:
                assert closed.rcvd is None or closed.rcvd.code in (1000, 1003, 1008, 1009), closed.rcvd
                break
    assert server.client.get("/api/health").status_code == 200
