"""A run (or a group) started from a preset keeps the preset's and the variant's names, so the
dashboard can show what the preset explains next to the run; a variant is one of its preset's."""

from __future__ import annotations

import pytest
from gradwatch.presets import PRESETS
from gradwatch.server.store import Store

from .conftest import LiveServer

QUICK = {"steps": 2, "eval_every": 0, "depth": 2, "width": 16}  # start and end at once


def test_a_preset_run_keeps_its_preset_and_variant(live_server: LiveServer) -> None:
    r = live_server.client.post("/api/runs", json={"preset": "explosion", "variant": "plain-l2", "config": QUICK})
    assert r.status_code == 201, r.text
    run = r.json()
    # The variant's fields over the preset's, then the given ones; its name says both.
    assert run["config"]["l2"] == 0.05 and run["config"]["steps"] == 2
    assert run["name"] == "explosion plain-l2"
    assert run["preset"] == {"name": "explosion", "variant": "plain-l2", "changed": sorted(QUICK)}
    # Listed and stored with it, and still there when it has ended.
    assert live_server.wait_status(run["id"], ("completed", "diverged"))["preset"]["variant"] == "plain-l2"
    listed = next(x for x in live_server.client.get("/api/runs").json() if x["id"] == run["id"])
    assert listed["preset"] == run["preset"]
    # A run of the variant as it is changes nothing; one without a preset has none.
    same = live_server.client.post("/api/runs", json={"preset": "explosion", "variant": "bn",
                                                       "config": {"batchnorm": True}}).json()
    assert same["preset"] == {"name": "explosion", "variant": "bn", "changed": []}
    live_server.client.post(f"/api/runs/{same['id']}/stop")
    plain = live_server.create_run(QUICK)
    assert plain["preset"] is None


@pytest.mark.parametrize(("body", "msg"), [
    ({"preset": "explosion", "variant": "nope"}, "no variant 'nope'; expected one of plain, bn"),
    ({"variant": "plain"}, "a variant needs its preset"),
])
def test_a_variant_must_be_one_of_its_presets(live_server: LiveServer, body: dict, msg: str) -> None:
    r = live_server.client.post("/api/runs", json={**body, "config": QUICK})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"][-1] == "variant" and msg in detail["msg"]


def test_a_group_from_a_preset_names_the_variant_of_each_cell(live_server: LiveServer) -> None:
    body = {"name": "explosion BN × L2", "preset": "explosion", "base": {"steps": 2, "eval_every": 0},
            "vary": {"batchnorm": [False, True], "l2": [0, 0.01]}}
    r = live_server.client.post("/api/groups", json=body)
    assert r.status_code == 201, r.text
    group = r.json()
    assert group["preset"] == {"name": "explosion", "variant": None}
    assert group["base"]["depth"] == PRESETS["explosion"].config["depth"]  # the preset's, not the default
    variants = {(x["config"]["batchnorm"], x["config"]["l2"]): x["preset"]["variant"] for x in group["runs"]}
    # BN off/on at L2 0 are the preset's `plain` and `bn`; L2 0.01 is none of its variants.
    assert variants == {(False, 0): "plain", (True, 0): "bn", (False, 0.01): None, (True, 0.01): None}
    assert all(x["preset"]["name"] == "explosion" for x in group["runs"])
    for x in group["runs"]:
        live_server.wait_status(x["id"], ("completed", "diverged", "failed"))
    bad = live_server.client.post("/api/groups", json={**body, "variant": "nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "variant"


def test_an_old_data_dir_gets_the_preset_column(tmp_path) -> None:  # noqa: ANN001
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")  # the runs table as it was before presets were kept
    db.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
               "config TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, error TEXT, "
               "summary TEXT NOT NULL DEFAULT '{}', layers TEXT, token TEXT NOT NULL, "
               "last_seq INTEGER NOT NULL DEFAULT 0, kind TEXT NOT NULL DEFAULT 'local', group_id TEXT)")
    db.execute("INSERT INTO runs (id, name, status, config, created, token) "
               "VALUES ('a', 'a', 'completed', '{}', 0, 't')")
    db.commit()
    db.close()
    store = Store(tmp_path / "old.db")
    try:
        assert store.get_run("a")["preset"] is None
        store.update_run("a", preset={"name": "explosion", "variant": None, "changed": []})
        assert store.get_run("a")["preset"]["name"] == "explosion"
    finally:
        store.close()
