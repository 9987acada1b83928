"""Your own loop in the dashboard: examples/own_loop.py (gradwatch.connect) against a real server,
through a dashboard Stop and through a server restart in the middle of the run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import ROOT, LiveServer, wait_for

EXAMPLE = ROOT / "examples" / "own_loop.py"


def start_example(server: LiveServer, steps: int, name: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           # 2 cores shared with the server and its workers: torch's spinning intra-op threads
           # would make this tiny model ~10x slower, not faster.
           "OMP_NUM_THREADS": "1"}
    env.pop("GRADWATCH_TOKEN", None)
    cmd = [sys.executable, str(EXAMPLE), "--server", server.url, "--steps", str(steps), "--name", name]
    if server.token:
        cmd += [f"--token={server.token}"]  # = form: a token may start with "-"
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)


def run_named(server: LiveServer, name: str) -> dict | None:
    return next((r for r in server.client.get("/api/runs").json() if r["name"] == name), None)


def full_history(server: LiveServer, run_id: str) -> dict:
    return server.client.get(f"/api/runs/{run_id}/metrics", params={"max_points": 100_000}).json()


def finish(proc: subprocess.Popen, log: Path, timeout: float = 180) -> str:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"the example did not finish within {timeout:g} s: {log.read_text()[-2000:]}")
    out = log.read_text()
    assert proc.returncode == 0, out[-2000:]
    return out


def test_the_own_loop_example_streams_every_step_live_and_completes(live_server: LiveServer, tmp_path: Path) -> None:
    name = f"own-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "example.log"
    proc = start_example(live_server, 1500, name, log)
    try:
        live = wait_for(lambda: (lambda r: r if r and r["summary"].get("step", 0) > 0 else None)(
            run_named(live_server, name)), timeout=120, what="the external run to show steps")
        assert live["kind"] == "external" and live["config"]["model"] == "torchvision mlp"
        assert "token" not in live  # the ingest token is only in the create answer
        out = finish(proc, log)
    finally:
        proc.kill()
    run = live_server.wait_status(live["id"], ("completed",), timeout=30)
    assert f"streaming run {run['id']}" in out and "all steps stored" in out
    assert run["summary"]["step"] == 1500 and run["finished"] >= run["started"]
    hist = full_history(live_server, run["id"])
    assert hist["step"] == list(range(1, 1501))
    assert hist["layers"][0]["module"] == "Linear" and len(hist["grad_norm"][0]) == len(hist["layers"])
    assert all(v is not None and v > 0 for v in hist["grad_norm"][-1])
    assert hist["loss"][-1] < hist["loss"][0]  # the loss recorded with run.record() reached the server
    assert hist["val"]["step"] == list(range(100, 1501, 100))
    kinds = [e["type"] for e in hist["events"]]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished" and "dropped" not in kinds


def test_stop_in_the_dashboard_ends_the_loop_stopped(live_server: LiveServer, tmp_path: Path) -> None:
    name = f"stoppable-{uuid.uuid4().hex[:6]}"
    log = tmp_path / "example.log"
    proc = start_example(live_server, 1_000_000, name, log)
    try:
        run = wait_for(lambda: (lambda r: r if r and r["summary"].get("step", 0) >= 20 else None)(
            run_named(live_server, name)), timeout=120, what="the external run to train")
        assert live_server.client.post(f"/api/runs/{run['id']}/stop").status_code == 200
        finish(proc, log, timeout=60)  # run.should_stop turned true, the loop broke out, finish() acked
    finally:
        proc.kill()
    stopped = live_server.wait_status(run["id"], ("stopped",), timeout=10)
    assert stopped["error"] == "stopped on request"
    hist = full_history(live_server, run["id"])
    assert hist["step"] == list(range(1, len(hist["step"]) + 1)) and len(hist["step"]) < 1_000_000
    assert hist["events"][-1].get("source") != "server"  # the loop said so itself; nobody was killed


def test_a_server_restart_mid_run_loses_no_step(tmp_path: Path) -> None:
    """The loop keeps training while the server is away; its sender resends after the restart."""
    steps = 3000
    server = LiveServer(tmp_path / "data").start()
    log = tmp_path / "example.log"
    proc = start_example(server, steps, "survivor", log)
    try:
        try:
            run = wait_for(lambda: (lambda r: r if r and r["summary"].get("step", 0) >= 50 else None)(
                run_named(server, "survivor")), timeout=120, what="the external run to train")
        finally:
            server.stop()
        down = time.time()
        assert proc.poll() is None, "the example should still be training when the server goes"
        wait_for(lambda: time.time() - down > 1.0, what="a second of training with no server")
        up = time.time()
        again = LiveServer(tmp_path / "data", port=server.port, token=server.token).start()
        try:
            finish(proc, log)
            done = again.wait_status(run["id"], ("completed",), timeout=30)
            hist = full_history(again, run["id"])
        finally:
            again.stop()
    finally:
        proc.kill()
    assert done["summary"]["step"] == steps
    assert hist["step"] == list(range(1, steps + 1))  # none missing, none doubled
    assert hist["seq"] == sorted(set(hist["seq"]))
    # some of those steps were taken while no server was there to receive them
    assert any(down < t < up for t in hist["time"])
    assert [e["type"] for e in hist["events"]].count("run.finished") == 1


def test_creating_an_external_run_returns_its_ingest_token_once(live_server: LiveServer) -> None:
    r = live_server.client.post("/api/runs", json={"name": "ext", "external": True,
                                                   "config": {"arch": "resnet50", "lr": 0.1, "tags": ["a"]}})
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["kind"] == "external" and created["status"] == "running"
    assert created["config"] == {"arch": "resnet50", "lr": 0.1, "tags": ["a"]}  # stored as given
    assert isinstance(created["token"], str) and len(created["token"]) >= 16
    assert "token" not in live_server.run(created["id"])
    assert all("token" not in run for run in live_server.client.get("/api/runs").json())
    local = live_server.client.post("/api/runs", json={"config": {"dataset": "synthetic", "steps": 5}}).json()
    assert "token" not in local and local["kind"] == "local"
    # an external config is free-form but must be a small object
    for bad in ({"external": True, "config": [1, 2]}, {"external": True, "config": {"x": "y" * 20_000}}):
        r = live_server.client.post("/api/runs", json=bad)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "config"], r.text
    # a local run's config is still checked field by field
    r = live_server.client.post("/api/runs", json={"config": {"arch": "resnet50"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "arch"
    live_server.client.post(f"/api/runs/{created['id']}/stop")
    live_server.wait_status(created["id"], ("stopped",))


def test_own_loops_live_at_once_are_capped_with_a_clear_429(tmp_path: Path) -> None:
    from gradwatch.external import ApiError, connect

    server = LiveServer(tmp_path / "data", env={"GRADWATCH_MAX_EXTERNAL": "1"}).start()
    try:
        first = server.client.post("/api/runs", json={"name": "one", "external": True})
        assert first.status_code == 201, first.text
        r = server.client.post("/api/runs", json={"name": "two", "external": True})
        assert r.status_code == 429 and "GRADWATCH_MAX_EXTERNAL" in r.json()["detail"], r.text
        with pytest.raises(ApiError, match="HTTP 429: 1 of your own training loops are already live"):
            connect(server.url, token=server.token, name="three")  # what a script sees
        local = server.client.post("/api/runs", json={"config": {"dataset": "synthetic", "steps": 5}})
        assert local.status_code == 201  # the server's own runs have their own limits
        server.client.post(f"/api/runs/{first.json()['id']}/stop")
        server.wait_status(first.json()["id"], ("stopped",))
        assert server.client.post("/api/runs", json={"name": "four", "external": True}).status_code == 201
    finally:
        server.stop()


def test_connect_names_an_unreachable_server_and_a_wrong_token(live_server: LiveServer, tmp_path: Path) -> None:
    import gradwatch
    from gradwatch.external import ApiError, connect

    assert gradwatch.connect is connect  # the function, whichever import came first

    with pytest.raises(ConnectionError, match="cannot reach the gradwatch server"):
        connect("http://127.0.0.1:9", name="nowhere")
    server = live_server if live_server.token else LiveServer(tmp_path / "data", token="right-token-123").start()
    try:
        with pytest.raises(ApiError) as err:
            connect(server.url, token="wrong-token-456", name="refused")
        assert err.value.status == 401 and "token" in str(err.value)
        assert not [r for r in server.client.get("/api/runs").json() if r["name"] == "refused"]
    finally:
        if server is not live_server:
            server.stop()


TINY_LOOP = """
import torch
from gradwatch import connect

def train(run, steps=5):
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    run.watch(model, opt)
    for _ in range(steps):
        loss = model(torch.randn(16, 4)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        run.record(loss)
        opt.step()
"""


def test_an_exception_or_a_forgotten_finish_ends_the_run_failed_with_every_step(live_server: LiveServer) -> None:
    scope: dict = {}
    exec(TINY_LOOP, scope)  # the same five-step loop, here and in a script below
    with pytest.raises(RuntimeError, match="boom"), \
            scope["connect"](live_server.url, token=live_server.token, name="boom") as run:
        scope["train"](run)
        raise RuntimeError("boom")
    failed = live_server.wait_status(run.id, ("failed",), timeout=10)
    assert failed["error"] == "RuntimeError: boom" and failed["summary"]["step"] == 5

    # A script that never calls finish(): its buffered steps still land, and the reason says why.
    script = TINY_LOOP + f"""
run = connect({live_server.url!r}, token={live_server.token!r}, name="forgetful")
train(run)
print(run.id)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    forgetful = live_server.wait_status(done.stdout.strip(), ("failed",), timeout=10)
    assert forgetful["error"] == "the script exited without calling run.finish()"
    assert full_history(live_server, forgetful["id"])["step"] == [1, 2, 3, 4, 5]



def test_a_fast_loop_sends_once_per_linger_and_loses_no_step(live_server: LiveServer) -> None:
    """connect(linger=...): the steps of each interval go in one websocket message (fewer wake-ups
    and store transactions for a fast loop); every step is still stored, in order."""
    import torch
    from gradwatch import connect

    messages, took = {}, {}
    for linger in (0.0, 0.25):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with connect(live_server.url, token=live_server.token, name=f"linger-{linger}", linger=linger) as run:
            run.watch(model, opt)
            wait_for(lambda: run.client.hello_ready.is_set(), timeout=10, what="the ingest connection")
            started = time.monotonic()
            for _ in range(40):  # ~100 steps/s: four steps in each 25 ms the sender would wait
                loss = model(torch.randn(16, 4)).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                run.record(loss)
                opt.step()
                time.sleep(0.01)  # pacing the loop, not waiting on anything
            took[linger] = time.monotonic() - started
        live_server.wait_status(run.id, ("completed",), timeout=10)
        assert full_history(live_server, run.id)["step"] == list(range(1, 41))
        messages[linger] = run.client.messages
    # At most one message per 0.25 s (plus the run's start and end), against about one per step
    # without a linger.
    assert messages[0.25] <= took[0.25] / 0.25 + 3, (messages, took)
    assert messages[0.0] >= 20, (messages, took)


def test_an_own_loop_that_blows_up_is_diagnosed_off_its_training_thread_in_step_order(
        live_server: LiveServer) -> None:
    """The diagnosis of a connect() run (its detector: ~0.3 ms a step) runs on the client's sender
    thread, not the training loop's; its alerts still follow their step's metrics, and finish()
    reports the complete summary (the alert, then where and when it diverged)."""
    import threading

    import torch
    from gradwatch import connect

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    blow_up, nonfinite = 40, 44
    with connect(live_server.url, token=live_server.token, name="blows-up", linger=0.02) as run:
        run.watch(model, opt)
        judged: list[tuple[int, str]] = []  # (step, thread) of each step the detector judged
        step_of = run._diagnosis.step

        def spy(stats: dict) -> list:
            judged.append((stats["step"], threading.current_thread().name))
            return step_of(stats)

        run._diagnosis.step = spy
        for step in range(1, 51):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            (loss * (1e4 if step >= blow_up else 1.0)).backward()  # every gradient 10^4x from step 40
            if step == nonfinite:
                model[2].weight.grad.fill_(float("inf"))
            run.record(loss)
            opt.step()
        on_loop = [s for s, thread in judged if thread == threading.current_thread().name]
        finished_at = len(judged)
    # Before finish(), no step was judged on the training thread (finish() judges what was left).
    assert not on_loop or min(on_loop) > finished_at, (on_loop, finished_at)
    assert [s for s, _ in judged] == list(range(1, 51))
    assert run.summary["first_alert_step"] == blow_up, run.summary
    assert run.summary["diverged_step"] == nonfinite and run.summary["first_nonfinite_layer"] == "2.weight", run.summary
    live_server.wait_status(run.id, ("completed",), timeout=10)
    stored = live_server.client.get(f"/api/runs/{run.id}/export").json()["events"]
    order = [(e["type"], e.get("step"), e.get("kind")) for e in stored if e["type"] in ("metrics", "alert")]
    spike = order.index(("alert", blow_up, "grad_spike"))
    assert order[spike - 1] == ("metrics", blow_up, None) and order[spike + 1] == ("metrics", blow_up + 1, None), order
    bad = order.index(("alert", nonfinite, "nonfinite"))
    assert order[bad - 1] == ("metrics", nonfinite, None), order
