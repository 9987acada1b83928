"""The statistics registry (gradwatch.stats) is what the store, the ingest checks, the API schema,
the API's routes and the page use: each test here fails when one of them disagrees with it. The
probe's side (it sends exactly the registry's names) is in tests/test_probe.py, which has torch."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradwatch.server import migrations
from gradwatch.server.app import create_app
from gradwatch.server.columns import SERIES_FIRST
from gradwatch.server.routes.runs import HEATMAP_STATS
from gradwatch.server.schemas import LayerStats, Metrics
from gradwatch.server.settings import Settings
from gradwatch.server.store import SCHEMA_VERSION, Store
from gradwatch.server.wire import METRICS_KNOWN, BadEvent, Checker
from gradwatch.stats import BY_NAME, HEATMAP, PER_STATS_STEP, PER_STEP, REGISTRY, STORED_STATS, STORED_STEP
from starlette.testclient import TestClient

from ..conftest import ROOT
from .fakes import FakeLauncher

TOKEN = "fast-stats-token"
LAYERS = [{"name": "0.weight", "module": "Linear", "shape": [4, 4]},
          {"name": "0.bias", "module": "Linear", "shape": [4]}]


def metrics(seq: int, step: int, **extra: Any) -> dict[str, Any]:
    values = {k: [0.25 * step, 0.5] for k in PER_STEP}
    return {"type": "metrics", "seq": seq, "step": step, "time": time.time(), "loss": 1.0, "accuracy": 0.5,
            "global_grad_norm": 1.0, **values, **extra}


def stats_of(acts: int, bns: int) -> dict[str, Any]:
    width = {"activation": acts, "bn": bns}
    return {"act_layers": [f"a{i}" for i in range(acts)], "bn_layers": [f"b{i}" for i in range(bns)],
            "bn_feeds": [None] * bns, **{k: [0.5] * width[BY_NAME[k].per] for k in PER_STATS_STEP}}


def blob_columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [r[1] for r in db.execute(f"PRAGMA table_info({table})") if r[2] == "BLOB"]


def test_the_registry_says_each_statistic_once_with_what_the_page_needs() -> None:
    assert len({s.name for s in REGISTRY}) == len(REGISTRY)
    for s in REGISTRY:
        assert s.cadence in ("step", "stats") and s.per in ("parameter", "activation", "bn"), s
        assert s.scale in ("log", "linear") and s.title and s.label and s.description, s
        assert s.cadence == "stats" or s.per == "parameter", s  # the probe takes the others on stats steps
        assert not s.heatmap or s.stored, f"{s.name}: the heatmap reads a column"
        assert s.line is None or (s.stored and s.cadence == "stats"), f"{s.name}: a line chart reads a stats column"


def test_the_store_has_a_blob_column_for_each_stored_statistic(tmp_path: Path) -> None:
    store = Store(tmp_path / "g.db")
    try:
        assert blob_columns(store.db, "series") == list(STORED_STEP)
        assert blob_columns(store.db, "layer_stats") == list(STORED_STATS)
    finally:
        store.close()


def test_a_statistic_new_to_the_registry_gets_its_column_at_start_and_older_rows_have_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """registry_columns is the migration generated from the registry: no version, no SQL by hand."""
    store = Store(tmp_path / "g.db")
    store.create_run({"id": "r1", "name": "r1", "status": "running", "config": {}, "created": 1.0, "token": "t"})
    store.append_events("r1", [{**metrics(1, 1), "stats": stats_of(1, 0)}])
    store.close()
    monkeypatch.setattr(migrations, "SERIES_LAYERS", (*STORED_STEP, "new_per_step"))
    monkeypatch.setattr(migrations, "STATS_LAYERS", (*STORED_STATS, "new_per_stats_step"))
    store = Store(tmp_path / "g.db")
    try:
        assert blob_columns(store.db, "series")[-1] == "new_per_step"
        assert blob_columns(store.db, "layer_stats")[-1] == "new_per_stats_step"
        assert store.db.execute("SELECT new_per_step FROM series").fetchall() == [(None,)]
        assert store.db.execute("SELECT new_per_stats_step FROM layer_stats").fetchall() == [(None,)]
        assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert store.events("r1")[0]["grad_norm"] == [0.25, 0.5]  # the row reads back as before
    finally:
        store.close()


def test_ingest_takes_every_registry_statistic_and_checks_its_length_by_what_it_is_per() -> None:
    assert set(PER_STEP) <= METRICS_KNOWN
    checker = Checker("r", LAYERS, 0)
    checker.check([{**metrics(1, 1), "stats": stats_of(3, 2)}])  # everything the registry lists, right lengths
    for k in PER_STEP:
        with pytest.raises(BadEvent, match=f"{k}: 3 values for 2 layers"):
            checker.check([{**metrics(1, 1), k: [1.0, 2.0, 3.0]}])
    for k in PER_STATS_STEP:
        stats = stats_of(3, 2)
        stats[k] = stats[k] + [0.5]
        with pytest.raises(BadEvent, match=f"stats.{k}: 4 values for 3 layers|stats.{k}: 3 values for 2 layers"):
            checker.check([{**metrics(1, 1), "stats": stats}])


def test_the_api_schema_names_every_stored_statistic() -> None:
    assert set(STORED_STEP) <= set(Metrics.model_fields)
    assert set(STORED_STATS) <= set(LayerStats.model_fields)
    for k in STORED_STATS:
        assert BY_NAME[k].description in LayerStats.model_fields[k].description


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("fast-stats") / "data", token=TOKEN)
    with TestClient(create_app(settings, launcher=FakeLauncher()), base_url="http://127.0.0.1:8000",
                    headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


def test_the_api_serves_the_registry_and_takes_its_names(client: TestClient) -> None:
    assert client.get("/api/stats").json() == [s.as_dict() for s in REGISTRY]
    assert HEATMAP_STATS == HEATMAP
    run = client.post("/api/runs", json={"external": True, "config": {}}).json()
    with client.websocket_connect(f"ws://127.0.0.1:8000/api/ingest/{run['id']}",
                                  headers={"Authorization": f"Bearer {run['token']}"}) as worker:
        worker.receive_json()
        started = {"type": "run.started", "seq": 1, "time": time.time(), "layers": LAYERS, "device": "cpu"}
        worker.send_json({"type": "batch", "events": [started, {**metrics(2, 1), "stats": stats_of(1, 1)}]})
        assert worker.receive_json() == {"type": "ack", "seq": 2}
    url = f"/api/runs/{run['id']}"
    history = client.get(f"{url}/metrics").json()
    for k in STORED_STEP:
        assert history[k] == [[0.25, 0.5]], k
    for k in STORED_STATS:
        assert history["stats"][k] == [[0.5]], k
    rows = {"parameter": [layer["name"] for layer in LAYERS], "activation": ["a0"], "bn": ["b0"]}
    for k in HEATMAP:  # a row per what the statistic is per
        body = client.get(f"{url}/heatmap", params={"stat": k})
        assert body.status_code == 200 and body.json()["max"] == [[0.5] if k in STORED_STATS else [0.25, 0.5]], k
        assert [layer["name"] for layer in body.json()["layers"]] == rows[BY_NAME[k].per], k
    assert client.get(f"{url}/heatmap", params={"stat": "loss"}).status_code == 422
    header = client.get(f"{url}/export", params={"format": "csv"}).text.splitlines()[0]
    assert [c for c in header.split(",") if ":" in c] == [f"{k}:{n['name']}" for k in STORED_STEP for n in LAYERS]



def test_a_run_that_never_sent_a_newer_statistic_answers_without_it(client: TestClient) -> None:
    """A worker of an older version sends only version 2's per-layer arrays: /metrics and the CSV
    export leave the statistics added since out (as /metrics leaves out `lr`), not arrays of nulls."""
    newer = [k for k in STORED_STEP if k not in SERIES_FIRST]
    run = client.post("/api/runs", json={"external": True, "config": {}}).json()
    with client.websocket_connect(f"ws://127.0.0.1:8000/api/ingest/{run['id']}",
                                  headers={"Authorization": f"Bearer {run['token']}"}) as worker:
        worker.receive_json()
        started = {"type": "run.started", "seq": 1, "time": time.time(), "layers": LAYERS, "device": "cpu"}
        old = {k: v for k, v in metrics(2, 1).items() if k not in newer}
        worker.send_json({"type": "batch", "events": [started, old]})
        assert worker.receive_json() == {"type": "ack", "seq": 2}
    url = f"/api/runs/{run['id']}"
    history = client.get(f"{url}/metrics").json()
    assert history["grad_norm"] == [[0.25, 0.5]] and not set(newer) & set(history)
    header = client.get(f"{url}/export", params={"format": "csv"}).text.splitlines()[0]
    assert [c.split(":")[0] for c in header.split(",") if ":" in c] == [k for k in SERIES_FIRST for _ in LAYERS]
    for k in newer:
        assert client.get(f"{url}/heatmap", params={"stat": k}).json()["layers"] == []


# ---- the page --------------------------------------------------------------------------------

JS = ROOT / "frontend" / "js"
# Where the page may name a statistic itself, and why; anything else reads stats.js (the served list).
NAMED_IN_JS = {
    # the profiles' and the line charts' buffers
    "series.js": {"grad_norm", "weight_norm", "update_ratio", "eff_lr", "dead_frac"},
    "profiles.js": {"grad_norm", "weight_norm", "update_ratio"},  # which chart shows which
    "presets.js": {"grad_norm", "weight_norm", "update_ratio", "eff_lr", "dead_frac"},  # a preset's `watch`: a chart
    "charts.js": {"grad_norm"},  # the heatmap's first statistic
    "state.js": {"grad_norm"},  # the default statistic
    "main.js": {"grad_norm"},  # the default, for a link naming one no longer offered
}


def test_the_page_names_statistics_only_where_it_must_and_reads_the_rest_from_the_server() -> None:
    names = "|".join(BY_NAME)
    for path in sorted(JS.glob("*.js")):
        if path.name == "stats.js":
            continue
        found = set(re.findall(rf"(?<![A-Za-z0-9_])({names})(?![A-Za-z0-9_])", path.read_text()))
        extra = found - NAMED_IN_JS.get(path.name, set())
        assert not extra, f"{path.name} names {sorted(extra)}: read them from stats.js (GET /api/stats)"
    html = (ROOT / "frontend" / "index.html").read_text()
    assert re.search(r'<select id="heatmap-stat"[^>]*></select>', html), "the menu's options come from stats.js"


def test_what_the_page_names_itself_agrees_with_the_registry() -> None:
    series = (JS / "series.js").read_text()
    layer_stats = re.search(r"export const LAYER_STATS = \[(.*?)\];", series).group(1)
    per_step = {k for k in re.findall(r"'([a-z_]+)'", layer_stats)}
    profiles = set(re.findall(r"stat: '([a-z_]+)'", (JS / "profiles.js").read_text()))
    assert profiles and profiles <= per_step <= set(STORED_STEP)
    # StatsSeries reads the line charts' statistics: those the page asks /metrics for (stats.js lineStats).
    read = set(re.findall(r"\b(?:stats|cols)\.(eff_lr|dead_frac)\b", series)) | set(
        re.findall(r"\bcols\.(eff_lr|dead_frac)\?\.", series))
    assert read == {s.name for s in REGISTRY if s.line}
