"""Ablation groups, live changes, export and the heatmap, against a real server and store."""

from __future__ import annotations

import asyncio
import csv
import io
import math

import numpy as np
import orjson
import pytest
from gradwatch.server.routes.runs import run_heatmap
from gradwatch.server.store import Store
from gradwatch.stats import STORED_STEP

from .conftest import LiveServer, wait_for

FAST = {"dataset": "synthetic", "depth": 2, "width": 8, "steps": 20, "eval_every": 10}


def test_a_2x2x2_group_makes_8_runs_with_the_same_data_order_per_seed(live_server: LiveServer) -> None:
    r = live_server.client.post("/api/groups", json={
        "name": "bnxl2", "base": FAST, "vary": {"batchnorm": [False, True], "l2": [0, 0.01]}, "seeds": [0, 1]})
    assert r.status_code == 201, r.text
    group = r.json()
    assert len(group["runs"]) == 8
    combos = sorted((x["config"]["batchnorm"], x["config"]["l2"], x["config"]["seed"]) for x in group["runs"])
    assert combos == sorted((bn, l2, s) for bn in (False, True) for l2 in (0, 0.01) for s in (0, 1))
    assert all(x["config"]["depth"] == 2 and x["group_id"] == group["id"] for x in group["runs"])

    def done() -> dict | None:
        g = live_server.client.get(f"/api/groups/{group['id']}").json()
        return g if all(c["status"] == "completed" for c in g["cells"]) else None

    g = wait_for(done, timeout=120, interval=0.5, what="all 8 runs to complete")
    assert all(c["best_val_accuracy"] is not None and c["final_loss"] is not None for c in g["cells"])
    # L2 does not touch the first step's loss: cells that differ only in L2 saw the same first
    # batch with the same initial weights, i.e. the same data order for the same seed.
    first = {}
    for run in g["runs"]:
        hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
        c = run["config"]
        first[(c["batchnorm"], c["l2"], c["seed"])] = hist["loss"][0]
    for bn in (False, True):
        for seed in (0, 1):
            assert first[(bn, 0, seed)] == first[(bn, 0.01, seed)]
        assert first[(bn, 0, 0)] != first[(bn, 0, 1)]


@pytest.mark.parametrize(
    ("body", "loc"),
    [({"vary": {"depht": [1, 2]}}, ["body", "vary", "depht"]),
     ({"vary": {"depth": [0, 2]}}, ["body", "vary", "depth"]),
     ({"vary": {"width": list(range(1, 9)), "depth": list(range(1, 10))}}, ["body", "vary"])],
)
def test_bad_groups_are_422(live_server: LiveServer, body: dict, loc: list) -> None:
    before = len(live_server.client.get("/api/runs").json())
    r = live_server.client.post("/api/groups", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == loc
    assert len(live_server.client.get("/api/runs").json()) == before


def test_patch_l2_on_a_running_run_applies_from_the_next_step(live_server: LiveServer) -> None:
    run = live_server.create_run({**FAST, "steps": 100_000, "l2": 0.0})
    wait_for(lambda: live_server.run(run["id"])["summary"].get("step", 0) > 3, what="the run to train")
    r = live_server.client.patch(f"/api/runs/{run['id']}", json={"l2": 0.5})
    assert r.status_code == 200, r.text

    def intervention() -> dict | None:
        hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
        iv = [e for e in hist["events"] if e["type"] == "intervention"]
        return (iv, hist) if iv else None

    iv, hist = wait_for(intervention, what="the intervention event")
    assert len(iv) == 1
    assert (iv[0]["field"], iv[0]["old"], iv[0]["new"]) == ("l2", 0.0, 0.5)  # new: read back from the optimizer
    step = iv[0]["step"]
    assert hist["step"][-1] >= step - 1  # recorded in order with the metrics it precedes
    assert live_server.client.patch(f"/api/runs/{run['id']}", json={"depth": 3}).status_code == 422
    assert live_server.client.patch(f"/api/runs/{run['id']}", json={"l2": -1}).status_code == 422
    live_server.client.post(f"/api/runs/{run['id']}/stop")
    live_server.wait_status(run["id"], ("stopped",))
    r = live_server.client.patch(f"/api/runs/{run['id']}", json={"l2": 0.1})
    assert r.status_code == 409 and "stopped" in r.json()["detail"]


def test_export_round_trips_every_series(live_server: LiveServer) -> None:
    run = live_server.create_run(FAST)
    live_server.wait_status(run["id"], ("completed",))
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()
    r = live_server.client.get(f"/api/runs/{run['id']}/export", params={"format": "csv"})
    assert r.status_code == 200 and "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert [int(x["step"]) for x in rows] == hist["step"]
    names = [layer["name"] for layer in hist["layers"]]
    for i, row in enumerate(rows):
        assert float(row["loss"]) == hist["loss"][i]
        for key in STORED_STEP:  # every per-layer statistic of the registry (the probe sends them all)
            assert [float(row[f"{key}:{n}"]) for n in names] == hist[key][i]
    assert [int(x["step"]) for x in rows if x["val_accuracy"]] == hist["val"]["step"]
    j = live_server.client.get(f"/api/runs/{run['id']}/export", params={"format": "json"}).json()
    assert j["metrics"]["grad_norm"] == hist["grad_norm"] and j["run"]["id"] == run["id"]
    assert [e["seq"] for e in j["events"]] == list(range(1, run_last_seq(live_server, run["id"]) + 1))


def run_last_seq(server: LiveServer, run_id: str) -> int:
    return server.run(run_id)["last_seq"]


@pytest.mark.parametrize("max_points", [2, 7, 50, 999, 5000])
def test_heatmap_buckets_keep_a_one_step_spike(tmp_path, max_points: int) -> None:
    store = Store(tmp_path / "s.sqlite3")
    run = {"id": "r1", "name": "r1", "status": "completed", "config": {}, "created": 0.0, "token": "t",
           "layers": [{"name": f"l{i}", "module": "Linear", "shape": [1]} for i in range(3)]}
    store.create_run(run)
    rng = np.random.default_rng(0)
    events = []
    for step in range(1, 3001):
        g = (rng.random(3) * 0.1 + 1.0).tolist()
        if step == 1234:
            g[1] = 1e6  # the one-step spike
        if step == 2000:
            g[2] = math.nan  # a non-finite value must not poison its bucket
        events.append({"type": "metrics", "seq": step, "step": step, "loss": 1.0, "accuracy": 0.5,
                       "grad_norm": g, "weight_norm": [1.0] * 3, "update_ratio": [0.01] * 3})
    store.append_events("r1", events)
    response = asyncio.run(run_heatmap(store.get_run("r1"), store, "grad_norm", max_points))
    body = orjson.loads(response.body)
    assert len(body["max"]) <= max_points
    col = [row[1] for row in body["max"]]
    assert max(col) == pytest.approx(1e6)
    hit = col.index(max(col))
    assert body["step_start"][hit] <= 1234 <= body["step_end"][hit]
    for i, row in enumerate(body["max"]):  # NaN is skipped; only a bucket of NaN alone is null
        if row[2] is None:
            assert body["step_start"][i] == body["step_end"][i] == 2000
        else:
            assert row[2] < 1.2
    assert body["step_start"][0] == 1 and body["step_end"][-1] == 3000
    store.close()
