"""The API in this process: the app from create_app() with a temporary data folder and a fake
launcher (tests/fast/fakes.py), driven through Starlette's TestClient, which runs the lifespan and
speaks HTTP and websockets to the app directly (no uvicorn, no socket, no worker process). A
test plays the worker itself on the ingest websocket, with the token the launcher was given.

What the live-server tests check end to end with real workers (tests/test_server.py,
tests/test_faults.py) is checked here for the server's side alone, in milliseconds."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from gradwatch.server.app import create_app
from gradwatch.server.settings import Settings
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ..conftest import stream_messages, wait_for
from .fakes import FakeLauncher

TOKEN = "fast-api-token"
SMALL = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 10, "eval_every": 0}
LAYERS = [{"name": "0.weight", "module": "Linear", "shape": [16, 16]},
          {"name": "0.bias", "module": "Linear", "shape": [16]}]


class App:
    """The app, its fake launcher, and helpers that read it as a client would."""

    def __init__(self, client: TestClient, launcher: FakeLauncher) -> None:
        self.client = client
        self.launcher = launcher

    def create(self, config: dict[str, Any] | None = None, **body: Any) -> dict[str, Any]:
        r = self.client.post("/api/runs", json={"config": {**SMALL, **(config or {})}, **body})
        assert r.status_code == 201, r.text
        return r.json()

    def run(self, run_id: str) -> dict[str, Any]:
        r = self.client.get(f"/api/runs/{run_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, run_id: str, *statuses: str) -> dict[str, Any]:
        return wait_for(lambda: (lambda r: r if r["status"] in statuses else None)(self.run(run_id)),
                        timeout=10, interval=0.01, what=f"run {run_id} to become {'/'.join(statuses)}")

    def ws(self, path: str, token: str | None = None) -> Any:
        """A websocket to the app (at the same host as its HTTP: the guard checks the Host)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.websocket_connect(f"ws://127.0.0.1:8000{path}", headers=headers)

    def exit_worker(self, run_id: str, code: int) -> None:
        """The fake worker process ends (on the app's event loop, where its future lives)."""
        self.client.portal.call(self.launcher.exit, run_id, code)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    launcher = FakeLauncher(max_concurrent=2)
    settings = Settings(data_dir=tmp_path_factory.mktemp("fast-api") / "data", token=TOKEN, max_concurrent=2,
                        stop_grace_s=0.5, stop_step_grace_s=0.5)
    application = create_app(settings, launcher=launcher)
    with TestClient(application, base_url="http://127.0.0.1:8000",
                    headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        launcher.store = application.state.store
        yield App(client, launcher)


def metrics(seq: int, step: int) -> dict[str, Any]:
    g = [0.5 + step / 100, 0.1]
    return {"type": "metrics", "seq": seq, "step": step, "time": time.time(), "loss": 2.0 / step, "accuracy": 0.5,
            "global_grad_norm": 1.0, "grad_norm": g, "weight_norm": g, "update_ratio": g}


def test_health_needs_no_token_and_the_rest_does(app: App) -> None:
    assert app.client.get("/api/health", headers={"Authorization": ""}).status_code == 200
    r = app.client.get("/api/runs", headers={"Authorization": ""})
    assert r.status_code == 401, r.text
    assert app.client.get("/api/runs", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_a_run_is_launched_trained_by_its_worker_and_completed(app: App) -> None:
    """Created, launched through the launcher (its launch recorded first), fed by its worker over
    the ingest socket (hello, batches, acks), streamed to a browser's socket, stored, completed."""
    run = app.create(name="lifecycle")
    run_id = run["id"]
    assert run["status"] in ("queued", "running") and "token" not in run
    wait_for(lambda: run_id in app.launcher.launched, timeout=10, interval=0.01, what="the launch")
    assert app.launcher.status_at_launch[run_id] == "running"
    shown = app.wait_status(run_id, "running")
    assert (shown["node"], shown["gpu"]) == ("fake-node", "7")
    token = app.launcher.specs[run_id].token
    with app.ws(f"/api/stream?runs={run_id}&token={TOKEN}") as browser, \
            app.ws(f"/api/ingest/{run_id}", token) as worker:
        hello = worker.receive_json()
        assert hello["type"] == "hello" and hello["acked_seq"] == 0 and hello["config"]["width"] == 16
        started = {"type": "run.started", "seq": 1, "time": time.time(), "layers": LAYERS, "device": "cpu"}
        worker.send_json({"type": "batch", "events": [started] + [metrics(s + 1, s) for s in (1, 2, 3)]})
        assert worker.receive_json() == {"type": "ack", "seq": 4}
        seen: list[dict[str, Any]] = []
        while len([m for m in seen if m["type"] == "metrics"]) < 3:
            seen += stream_messages(browser.receive_text())
        assert [m["step"] for m in seen if m["type"] == "metrics"] == [1, 2, 3]
        assert all(m["run_id"] == run_id for m in seen)
        finished = {"type": "run.finished", "seq": 5, "time": time.time(), "status": "completed", "reason": None,
                    "summary": {"step": 3}}
        worker.send_json({"type": "batch", "events": [finished]})
        assert worker.receive_json() == {"type": "ack", "seq": 5}
    app.exit_worker(run_id, 0)
    done = app.wait_status(run_id, "completed")
    assert done["error"] is None and done["last_seq"] == 5
    history = app.client.get(f"/api/runs/{run_id}/metrics").json()
    assert history["step"] == [1, 2, 3] and history["seq"] == [2, 3, 4]


def test_acks_are_coalesced_and_the_last_batch_is_always_acked(app: App) -> None:
    """Batches sent back to back get fewer acks than batches (at most one per ACK_S), the last
    of them for the last seq stored, soon after the last batch; a resend of stored events is acked."""
    from gradwatch.server.routes.ingest import ACK_S

    run = app.create(name="acks")
    run_id = run["id"]
    wait_for(lambda: run_id in app.launcher.launched, timeout=10, interval=0.01, what="the launch")
    token = app.launcher.specs[run_id].token
    with app.ws(f"/api/ingest/{run_id}", token) as worker:
        assert worker.receive_json()["type"] == "hello"
        started = {"type": "run.started", "seq": 1, "time": time.time(), "layers": LAYERS, "device": "cpu"}
        worker.send_json({"type": "batch", "events": [started]})
        assert worker.receive_json() == {"type": "ack", "seq": 1}  # after a quiet spell: at once
        for s in range(2, 22):
            worker.send_json({"type": "batch", "events": [metrics(s, s - 1)]})
        acks, began = [], time.monotonic()
        while not acks or acks[-1] < 21:
            msg = worker.receive_json()
            assert msg["type"] == "ack", msg
            acks.append(msg["seq"])
        assert acks == sorted(acks) and len(acks) < 20, acks  # 20 batches, fewer acks
        assert time.monotonic() - began < 20 * ACK_S + 5
        worker.send_json({"type": "batch", "events": [metrics(21, 20)]})  # stored already: acked anyway
        assert worker.receive_json() == {"type": "ack", "seq": 21}
    assert app.client.get(f"/api/runs/{run_id}/metrics").json()["seq"] == list(range(2, 22))


def test_a_launch_that_fails_leaves_the_run_failed_with_its_reason(app: App) -> None:
    app.launcher.fail.add("*")
    try:
        run_id = app.create(name="cannot-start")["id"]
        failed = app.wait_status(run_id, "failed")
    finally:
        app.launcher.fail.discard("*")
    assert failed["error"] == "could not start the worker: no such machine"
    assert run_id not in app.launcher.launched


def test_a_worker_that_exits_without_finishing_fails_its_run_with_the_launchers_reason(app: App) -> None:
    run_id = app.create(name="crash")["id"]
    app.wait_status(run_id, "running")
    app.exit_worker(run_id, 3)
    assert app.wait_status(run_id, "failed")["error"] == "fake worker ended with 3"


def test_stop_ends_a_run_whose_worker_has_not_connected_and_kills_that_worker(app: App) -> None:
    run_id = app.create(name="stop-me")["id"]
    app.wait_status(run_id, "running")
    r = app.client.post(f"/api/runs/{run_id}/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopped", r.text
    assert run_id in app.launcher.killed
    assert app.client.post(f"/api/runs/{run_id}/stop").json()["status"] == "stopped"  # again: nothing changes
    r = app.client.patch(f"/api/runs/{run_id}", json={"lr": 0.01})
    assert r.status_code == 409 and "stopped" in r.json()["detail"]


@pytest.mark.parametrize(("config", "field", "reason"), [
    ({"lr": -1}, "lr", "greater than"),
    ({"model": "nonexistent"}, "model", "mlp"),  # the reason lists what there is
    ({"bogus": 1}, "bogus", ""),
])
def test_a_bad_config_is_a_422_naming_the_field_and_the_reason(app: App, config: dict[str, Any], field: str,
                                                                reason: str) -> None:
    r = app.client.post("/api/runs", json={"config": {**SMALL, **config}})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    named = [d for d in detail if field in map(str, d["loc"])]
    assert named, detail
    assert reason.lower() in named[0]["msg"].lower(), named[0]


def test_an_unknown_run_is_a_404_naming_it(app: App) -> None:
    for r in (app.client.get("/api/runs/nosuchrun"), app.client.post("/api/runs/nosuchrun/stop"),
              app.client.delete("/api/runs/nosuchrun")):
        assert r.status_code == 404 and "nosuchrun" in r.json()["detail"], r.text


def test_ingest_refuses_a_wrong_token_before_accepting(app: App) -> None:
    run = app.create(external=True, name="own-loop")
    with pytest.raises(WebSocketDisconnect) as refused, \
            app.ws(f"/api/ingest/{run['id']}", "nope"):
        pass
    assert refused.value.code == 1008
    assert app.run(run["id"])["status"] == "running"  # nothing happened to the run


def test_an_event_a_worker_may_not_send_fails_its_run_saying_why(app: App) -> None:
    run = app.create(external=True, name="forger")
    with app.ws(f"/api/ingest/{run['id']}", run["token"]) as worker:
        assert worker.receive_json()["type"] == "hello"
        forged = {"type": "run.update", "seq": 1, "run": {"id": "someone-else", "status": "completed"}}
        worker.send_json({"type": "batch", "events": [forged]})
        assert worker.receive_json() == {"type": "control", "stop": True}
        with pytest.raises(WebSocketDisconnect) as closed:
            worker.receive_json()
        assert closed.value.code == 1008
    failed = app.wait_status(run["id"], "failed")
    assert "the server refused what the worker sent" in failed["error"] and "run.update" in failed["error"]


def test_a_live_change_reaches_the_connected_worker_and_the_history_and_export_read_back(app: App) -> None:
    run_id = app.create(name="changed")["id"]
    app.wait_status(run_id, "running")
    with app.ws(f"/api/ingest/{run_id}", app.launcher.specs[run_id].token) as worker:
        assert worker.receive_json()["type"] == "hello"
        started = {"type": "run.started", "seq": 1, "time": time.time(), "layers": LAYERS, "device": "cpu"}
        worker.send_json({"type": "batch", "events": [started] + [metrics(s + 1, s) for s in range(1, 6)]})
        assert worker.receive_json() == {"type": "ack", "seq": 6}
        r = app.client.patch(f"/api/runs/{run_id}", json={"lr": 0.05})
        assert r.status_code == 200, r.text
        assert worker.receive_json() == {"type": "control", "set": {"lr": 0.05}, "source": "api"}
        assert app.client.patch(f"/api/runs/{run_id}", json={}).status_code == 422  # nothing to change
        since = app.client.get(f"/api/runs/{run_id}/metrics", params={"since": 4}).json()
        assert since["step"] == [4, 5] and since["seq"] == [5, 6]
        bad = app.client.get(f"/api/runs/{run_id}/metrics", params={"stats": "nonsense"})
        assert bad.status_code == 422 and "nonsense" in bad.text
        csv = app.client.get(f"/api/runs/{run_id}/export", params={"format": "csv"})
        assert csv.status_code == 200 and f"gradwatch-{run_id}.csv" in csv.headers["content-disposition"]
        rows = csv.text.strip().splitlines()
        header = rows[0].split(",")
        assert len(rows) == 1 + 5 and header[:2] == ["seq", "step"]  # a header, then a row per step
        assert "grad_norm:0.weight" in header and "grad_norm:0.bias" in header  # a column per layer
        assert [row.split(",")[1] for row in rows[1:]] == ["1", "2", "3", "4", "5"]
    app.exit_worker(run_id, 1)  # connection gone, process gone, no run.finished: failed, saying why
    assert app.wait_status(run_id, "failed")["error"] == "fake worker ended with 1"


def test_a_deleted_run_is_gone_and_browsers_are_told(app: App) -> None:
    run_id = app.create(name="doomed")["id"]
    app.wait_status(run_id, "running")
    with app.ws(f"/api/stream?token={TOKEN}") as browser:
        assert app.client.delete(f"/api/runs/{run_id}").status_code == 204
        seen: list[dict[str, Any]] = []
        while not any(m["type"] == "run.deleted" for m in seen):
            seen += stream_messages(browser.receive_text())
    assert [m for m in seen if m["type"] == "run.deleted"] == [{"type": "run.deleted", "run_id": run_id, "seq": None}]
    assert run_id in app.launcher.killed
    assert app.client.get(f"/api/runs/{run_id}").status_code == 404
    assert run_id not in [r["id"] for r in app.client.get("/api/runs").json()]


def test_a_group_is_the_product_of_its_axes_and_a_bad_axis_is_a_422(app: App) -> None:
    r = app.client.post("/api/groups", json={"name": "bn x l2", "base": SMALL,
                                             "vary": {"batchnorm": [False, True], "l2": [0.0, 0.01]}})
    assert r.status_code == 201, r.text
    group = app.client.get(f"/api/groups/{r.json()['id']}").json()
    configs = sorted((run["config"]["batchnorm"], run["config"]["l2"]) for run in group["runs"])
    assert configs == [(False, 0.0), (False, 0.01), (True, 0.0), (True, 0.01)]
    assert all(run["config"]["width"] == 16 for run in group["runs"])  # the base under every cell
    for run in group["runs"]:  # end them, so that later tests have the two slots
        app.client.post(f"/api/runs/{run['id']}/stop")
    bad = app.client.post("/api/groups", json={"base": SMALL, "vary": {"nosuchfield": [1, 2]}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "vary", "nosuchfield"]
    big = app.client.post("/api/groups", json={"base": SMALL, "vary": {"seed": list(range(65))}})
    assert big.status_code == 422 and "at most 64" in big.text
    assert app.client.get("/api/groups/nosuchgroup").status_code == 404
