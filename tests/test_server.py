"""The server end to end: a real uvicorn on a free port, real worker processes, real websockets."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
from pathlib import Path

import orjson
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from .conftest import LiveServer, stream_messages, wait_for, worker_pids

FAST = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 40, "eval_every": 20}


def test_health(live_server: LiveServer) -> None:
    r = live_server.client.get("/api/health")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def _health_on(sock: socket.socket) -> bytes:
    """GET /api/health on an open connection; the whole answer (it has a Content-Length)."""
    sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.index(b"\r\n\r\n") + 4 + int(
            data.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0]):
        chunk = sock.recv(4096)
        assert chunk, f"closed mid-answer: {data!r}"
        data += chunk
    return data


def test_an_idle_kept_alive_connection_outlives_a_clients_keep_alive_expiry(live_server: LiveServer) -> None:
    """httpx keeps an idle connection 5 s; a server that closes at 5 s too races a client that
    sends just then ("Server disconnected without sending a response", seen once in CI). The
    server keeps it open for the header timeout (10 s): still open at 6.5 s, and answering."""
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=10) as sock:
        assert _health_on(sock).startswith(b"HTTP/1.1 200")
        readable, _, _ = select.select([sock], [], [], 6.5)  # a close by the server makes it readable
        assert readable == [], f"closed within 6.5 s idle: {sock.recv(100)!r}"
        assert _health_on(sock).startswith(b"HTTP/1.1 200")


def test_a_stream_on_loopback_is_not_compressed(live_server: LiveServer) -> None:
    """A local page's frames are not deflated (GRADWATCH_WS_COMPRESSION=auto): on loopback deflate
    is CPU on both ends for nothing. The client asks for it, as browsers do, and gets none."""
    with connect(live_server.ws_url("/api/stream"), open_timeout=10) as ws:
        assert "permessage-deflate" in ws.request.headers["Sec-WebSocket-Extensions"]
        assert ws.protocol.extensions == [] and "Sec-WebSocket-Extensions" not in ws.response.headers


def test_a_run_completes_in_a_worker_with_one_row_per_step(live_server: LiveServer) -> None:
    run = live_server.create_run(FAST, name="rest-run")
    assert run["status"] in ("queued", "running") and run["config"]["depth"] == 3
    assert run["config"]["optimizer"] == "sgd"  # the full resolved config, defaults included
    done = live_server.wait_status(run["id"], ("completed",))
    assert done["summary"]["step"] == 40 and done["finished"] >= done["started"] >= done["created"]
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
    n_layers = 2 * 3 + 2  # three hidden Linear (weight, bias) and the output layer
    assert [layer["name"] for layer in hist["layers"]][:2] == ["fc1.weight", "fc1.bias"]
    assert len(hist["layers"]) == n_layers
    assert hist["step"] == list(range(1, 41))
    assert all(len(row) == n_layers for key in ("grad_norm", "weight_norm", "update_ratio") for row in hist[key])
    assert hist["val"]["step"] == [20, 40]
    assert hist["events"][0]["type"] == "run.started" and hist["events"][-1]["type"] == "run.finished"
    # since= returns only what came later; max_points downsamples but keeps first and last
    later = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"since": hist["seq"][29]}).json()
    assert later["step"] == list(range(31, 41))
    few = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 5}).json()
    assert few["step"][0] == 1 and few["step"][-1] == 40 and len(few["step"]) == 5
    # the every-10-steps statistics, columnar, the same numbers as the stored events carry
    stats = hist["stats"]
    assert stats["step"] == [1, 10, 20, 30, 40]
    assert stats["act_layers"] == ["act1", "act2", "act3"] and stats["bn_layers"] == []
    assert all(len(row) == 3 and all(0 <= v <= 1 for v in row) for row in stats["dead_frac"])
    assert stats["eff_lr"] == [[]] * 5  # no BatchNorm, no effective learning rate
    exported = live_server.client.get(f"/api/runs/{run['id']}/export").json()["events"]
    sent = [e["stats"]["act_std"] for e in exported if e["type"] == "metrics" and "stats" in e]
    assert len(sent) == 5 and all(v == pytest.approx(w, rel=1e-6) for v, w in zip(stats["act_std"], sent, strict=True))
    assert later["stats"]["step"] == [40] and few["stats"]["step"] == [1, 10, 20, 30, 40]
    # the activations' statistics as a layer x step heatmap too (one row per activation)
    heat = live_server.client.get(f"/api/runs/{run['id']}/heatmap", params={"stat": "dead_frac"}).json()
    assert [layer["name"] for layer in heat["layers"]] == ["act1", "act2", "act3"]
    assert heat["step_start"] == [1, 10, 20, 30, 40] and heat["max"] == stats["dead_frac"]  # float32 both
    std = live_server.client.get(f"/api/runs/{run['id']}/heatmap", params={"stat": "act_std", "max_points": 2}).json()
    assert std["step_start"] == [1, 20] and std["step_end"] == [10, 40]
    assert std["max"][0] == pytest.approx([max(a, b) for a, b in zip(*stats["act_std"][:2], strict=True)])
    # only the statistics asked for (the page asks for the two it draws); a wrong name is a 422
    some = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"stats": "eff_lr,dead_frac"}).json()
    assert some["stats"]["dead_frac"] == stats["dead_frac"] and "act_std" not in some["stats"]
    assert "dead_frac" not in live_server.client.get(f"/api/runs/{run['id']}/metrics?stats=").json()["stats"]
    bad = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"stats": "eff_lr,nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "stats"]
    assert "'nope'" in bad.json()["detail"][0]["msg"]


def test_a_browser_stream_gets_metrics_live_in_seq_order(live_server: LiveServer) -> None:
    run = live_server.create_run({**FAST, "steps": 3000}, name="streamed")
    got: list[dict] = []
    # max_queue=None: with unread messages queued, the client library stops reading its socket
    # and its close waits 10 s for a frame it cannot see; the run would finish meanwhile.
    with connect(live_server.ws_url(f"/api/stream?runs={run['id']}"), open_timeout=10, max_queue=None) as ws:
        while len([m for m in got if m["type"] == "metrics"]) < 20:
            got += stream_messages(ws.recv(timeout=60))
        status_now = live_server.run(run["id"])["status"]
    assert status_now == "running"  # the messages came while the run was still training
    assert all(m["run_id"] == run["id"] for m in got if m["type"] not in ("run.update", "run.deleted"))
    seqs = [m["seq"] for m in got if m["type"] != "run.update"]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    steps = [m["step"] for m in got if m["type"] == "metrics"]
    assert steps == list(range(steps[0], steps[0] + len(steps)))
    live_server.client.post(f"/api/runs/{run['id']}/stop")
    assert live_server.wait_status(run["id"], ("stopped",))["error"] == "stopped on request"


def test_sigkill_of_a_worker_fails_its_run_and_the_server_lives(live_server: LiveServer) -> None:
    run = live_server.create_run({**FAST, "steps": 100_000}, name="doomed")
    wait_for(lambda: live_server.run(run["id"])["summary"].get("step", 0) > 5, what="the run to train")
    pids = worker_pids(run["id"])
    assert len(pids) == 1
    os.kill(pids[0], signal.SIGKILL)
    failed = live_server.wait_status(run["id"], ("failed",), timeout=10)
    assert "SIGKILL" in failed["error"]
    assert live_server.client.get("/api/health").json()["status"] == "ok"
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
    assert hist["seq"] == sorted(hist["seq"]) and len(hist["step"]) > 5
    assert hist["events"][-1]["type"] == "run.finished" and hist["events"][-1]["status"] == "failed"
    # and the next run still works
    assert live_server.wait_status(live_server.create_run(FAST)["id"], ("completed",))


def test_stop_and_delete(live_server: LiveServer) -> None:
    run = live_server.create_run({**FAST, "steps": 100_000})
    early = live_server.create_run({**FAST, "steps": 100_000})
    live_server.client.post(f"/api/runs/{early['id']}/stop")  # before its worker even connected
    assert live_server.wait_status(early["id"], ("stopped",), timeout=5)["error"]
    wait_for(lambda: live_server.run(run["id"])["summary"].get("step", 0) > 2, what="the run to train")
    r = live_server.client.post(f"/api/runs/{run['id']}/stop")
    assert r.status_code == 200
    stopped = live_server.wait_status(run["id"], ("stopped",), timeout=5)
    assert stopped["error"] == "stopped on request" and stopped["summary"]["step"] > 2
    assert not worker_pids(early["id"])
    assert live_server.client.delete(f"/api/runs/{run['id']}").status_code == 204
    assert live_server.client.get(f"/api/runs/{run['id']}").status_code == 404
    r = live_server.client.get("/api/runs/nope123/metrics")
    assert r.status_code == 404 and "nope123" in r.json()["detail"]


@pytest.mark.parametrize(
    ("config", "field"),
    [({"depth": 0}, "depth"), ({"model": "vit"}, "model"), ({"lr": "fast"}, "lr"),
     ({"steps": 10**9}, "steps"), ({"rm -rf": 1}, "rm -rf"), ({"batchnorm": "on"}, "batchnorm"),
     ({"width": 2048, "depth": 64}, "width")],
)
def test_a_bad_config_is_422_naming_the_field(live_server: LiveServer, config: dict, field: str) -> None:
    before = len(live_server.client.get("/api/runs").json())
    r = live_server.client.post("/api/runs", json={"config": config})
    assert r.status_code == 422
    assert any(d["loc"][-1] == field and d["msg"] for d in r.json()["detail"]), r.json()
    assert len(live_server.client.get("/api/runs").json()) == before  # nothing created


def test_an_offline_download_dataset_fails_naming_digits(live_server: LiveServer) -> None:
    run = live_server.create_run({**FAST, "dataset": "mnist"})
    failed = live_server.wait_status(run["id"], ("failed",))
    assert "digits" in failed["error"]


def test_a_restarted_server_still_has_the_run_and_its_history(tmp_path) -> None:
    server = LiveServer(tmp_path / "data").start()
    try:
        run = server.create_run(FAST, name="survivor")
        server.wait_status(run["id"], ("completed",))
        before = server.client.get(f"/api/runs/{run['id']}/metrics").json()
    finally:
        server.stop()
    again = LiveServer(tmp_path / "data", port=server.port).start()
    try:
        listed = again.client.get("/api/runs").json()
        assert [r["name"] for r in listed] == ["survivor"] and listed[0]["status"] == "completed"
        after = again.client.get(f"/api/runs/{run['id']}/metrics").json()
        assert after == before and len(after["step"]) == 40
    finally:
        again.stop()


def test_a_token_guards_every_api_route_and_websocket(tmp_path) -> None:
    server = LiveServer(tmp_path / "data", token="s3cret-token-123").start()
    try:
        import httpx

        anon = httpx.Client(base_url=server.url)
        assert anon.get("/api/health").status_code == 200
        assert anon.get("/api/runs").status_code == 401
        assert anon.post("/api/runs", json={}).status_code == 401
        assert anon.get("/api/runs", headers={"Authorization": "Bearer wrong-token"}).status_code == 401
        assert server.client.get("/api/runs").status_code == 200
        with pytest.raises(InvalidStatus):
            connect(server.ws_url("/api/stream", auth=False), open_timeout=10)
        with connect(server.ws_url("/api/stream", auth=False), open_timeout=10,
                     additional_headers={"Authorization": "Bearer s3cret-token-123"}) as ws:
            run = server.create_run(FAST)
            first = stream_messages(ws.recv(timeout=30))[0]
            assert first["run_id"] == run["id"]
        with connect(server.ws_url("/api/stream?token=s3cret-token-123", auth=False), open_timeout=10):
            pass
        # a worker's ingest socket takes only its own run's token
        with pytest.raises(InvalidStatus):
            connect(server.ws_url(f"/api/ingest/{run['id']}"), open_timeout=10,
                    additional_headers={"Authorization": "Bearer s3cret-token-123"})
        anon.close()
    finally:
        server.stop()


def test_many_browsers_and_a_silent_one_do_not_slow_ingest(live_server: LiveServer) -> None:
    """A subscriber that never reads does not hold up the run or the others."""
    with connect(live_server.ws_url("/api/stream"), open_timeout=10):  # never reads
        run = live_server.create_run({**FAST, "steps": 400})
        seen = threading.Event()

        def reader() -> None:
            with connect(live_server.ws_url(f"/api/stream?runs={run['id']}"), open_timeout=10) as ws:
                while True:
                    if any(m["type"] == "run.finished" for m in stream_messages(ws.recv(timeout=60))):
                        seen.set()
                        return

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        assert live_server.wait_status(run["id"], ("completed",))
        assert seen.wait(30)


def test_workers_are_spread_over_the_gpus(tmp_path) -> None:  # noqa: ANN001
    """Several GPUs (named here: this machine has none): each worker gets the least busy one in
    CUDA_VISIBLE_DEVICES, and the run says which while it runs."""
    env = {"GRADWATCH_GPUS": "0,1", "GRADWATCH_MAX_CONCURRENT": "3", "GRADWATCH_PREFORK": "0"}
    server = LiveServer(tmp_path / "data", env=env).start()
    try:
        runs = [server.create_run({**FAST, "steps": 100_000}, name=f"gpu-{i}") for i in range(3)]
        for run in runs:
            wait_for(lambda run=run: server.run(run["id"])["summary"].get("step", 0) > 2, what="the runs to train")
        gpus = [server.run(r["id"])["gpu"] for r in runs]
        assert sorted(gpus) == ["0", "0", "1"], gpus  # two GPUs, three workers: 2 + 1
        for run, gpu in zip(runs, gpus, strict=True):
            (pid,) = worker_pids(run["id"])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            assert f"CUDA_VISIBLE_DEVICES={gpu}".encode() in environ
        server.client.post(f"/api/runs/{runs[0]['id']}/stop")
        server.wait_status(runs[0]["id"], ("stopped",))
        # its GPU is free again once its worker has exited; its record still says where it ran
        wait_for(lambda: not worker_pids(runs[0]["id"]), what="the stopped worker to exit")
        assert server.run(runs[0]["id"])["gpu"] == gpus[0]
        nxt = server.create_run({**FAST, "steps": 100_000}, name="gpu-next")
        wait_for(lambda: server.run(nxt["id"])["status"] == "running", what="the next run to start")
        assert server.run(nxt["id"])["gpu"] == gpus[0]
        for run in [*runs[1:], nxt]:
            server.client.post(f"/api/runs/{run['id']}/stop")
    finally:
        server.stop()


def test_a_malformed_event_is_refused_with_its_batch_and_the_run_fails_saying_why(live_server: LiveServer) -> None:
    """A worker (or someone's own loop) sending an event of the wrong shape: nothing of its batch
    is stored, the worker is asked to stop, the run ends failed naming the event and the field,
    the socket closes with 1008, and the run's history and the server stay readable."""
    r = live_server.client.post("/api/runs", json={"name": "malformed", "external": True, "config": {}})
    run_id, token = r.json()["id"], r.json()["token"]
    layers = [{"name": "fc1.weight", "module": "Linear", "shape": [2, 2]},
              {"name": "fc1.bias", "module": "Linear", "shape": [2]}]
    batch = {"type": "batch", "events": [
        {"type": "run.started", "seq": 1, "layers": layers},
        {"type": "metrics", "seq": 2, "step": 1, "loss": 0.5, "grad_norm": [1.0, 2.0], "weight_norm": [1.0, 1.0],
         "update_ratio": [0.1, 0.1]},
        {"type": "metrics", "seq": 3, "step": "two", "loss": "abc", "grad_norm": ["x"], "stats": {"eff_lr": 5}},
    ]}
    with connect(live_server.ws_url(f"/api/ingest/{run_id}"), open_timeout=10,
                 additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        assert orjson.loads(ws.recv(timeout=10))["type"] == "hello"
        ws.send(orjson.dumps(batch))
        assert orjson.loads(ws.recv(timeout=10)) == {"type": "control", "stop": True}
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd.code == 1008 and "step" in closed.value.rcvd.reason
    done = live_server.wait_status(run_id, ("failed",), timeout=10)
    assert "event 2 ('metrics', seq 3): step: expected an integer" in done["error"], done["error"]
    hist = live_server.client.get(f"/api/runs/{run_id}/metrics")
    assert hist.status_code == 200, hist.text
    body = hist.json()
    assert body["layers"] == [] and body["step"] == []  # not one event of the batch
    assert [e["type"] for e in body["events"]] == ["run.finished"]  # the server's, saying why
    assert live_server.client.get(f"/api/runs/{run_id}/heatmap").status_code == 200
    assert live_server.client.get(f"/api/runs/{run_id}/export", params={"format": "csv"}).status_code == 200
    assert live_server.client.get("/api/health").json()["status"] == "ok"
