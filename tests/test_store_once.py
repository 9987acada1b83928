"""Each fact stored once (issue 18): a metrics event's per-layer arrays only in the columns, and
every answer that reads events back byte for byte what it was when the events were stored whole.

tests/fixtures/store_v3/ is a data dir written by the version before (tests/fixtures/make_store_v3.py,
run with that version's code), with the answers that version gave for it: /metrics (whole,
downsampled, since a seq), /export (json, csv) and the /api/stream?since= replay of two runs with
per-layer stats, evals, alerts and two live lr changes, one with the float64 update ratios the
probe used to send and one with the float32 ones it sends now. Its database is also taken down
to each older schema version by SQL, to test each migration from the version before it.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import orjson
import pytest
from gradwatch.server import migrations
from gradwatch.server.store import SCHEMA_VERSION, Store, StoreError

from .conftest import LiveServer

DATA = Path(__file__).resolve().parent / "fixtures" / "store_v3"
DB = "gradwatch.sqlite3"
RUNS = ("f64", "f32")
OLD = orjson.loads(gzip.decompress((DATA / "answers.json.gz").read_bytes()))

_spec = importlib.util.spec_from_file_location("make_store_v3", DATA.parent / "make_store_v3.py")
maker = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(maker)  # its answers(): the same reads, through today's code


def old_data_dir(tmp_path: Path) -> Path:
    shutil.copy(DATA / DB, tmp_path / DB)
    return tmp_path / DB


def assert_answers_as_before(store: Store) -> None:
    for run_id in RUNS:
        now = maker.answers(store, run_id)
        for name, text in OLD[run_id].items():
            assert now[name] == text, f"run {run_id}: {name} differs from the version before"


def schema(path: Path) -> dict[str, list]:
    db = sqlite3.connect(path)
    names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name")]
    out = {n: db.execute(f"PRAGMA index_xinfo({n})").fetchall() or db.execute(f"PRAGMA table_xinfo({n})").fetchall()
           for n in names}
    db.close()
    return out


def test_a_data_dir_of_the_version_before_migrates_in_place_and_answers_as_before(tmp_path: Path) -> None:
    path = old_data_dir(tmp_path)
    raw = sqlite3.connect(path)
    whole = dict(raw.execute("SELECT run_id, SUM(LENGTH(data)) FROM events GROUP BY run_id"))
    raw.close()
    store = Store(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert_answers_as_before(store)
    # the arrays are out of the events rows: all of the f32 run's, all but the float64 ones of the f64 run's
    rows = {run_id: [orjson.loads(d) for (d,) in store.db.execute(
        "SELECT data FROM events WHERE run_id = ? AND type = 'metrics'", (run_id,))] for run_id in RUNS}
    for events in rows.values():
        assert len(events) == 40
        assert all(e["grad_norm"] == [] and e["weight_norm"] == [] for e in events)
        assert all(e["stats"]["act_std"] == [] and e["stats"]["bn_var_drift"] == [] for e in events if "stats" in e)
    assert all(e["update_ratio"] == [] for e in rows["f32"])
    assert all(len(e["update_ratio"]) == 11 for e in rows["f64"])  # float64 values (11 tensors): kept as sent
    kept = dict(store.db.execute("SELECT run_id, SUM(LENGTH(data)) FROM events GROUP BY run_id"))
    assert kept["f32"] < whole["f32"] / 2
    # a run's limit still counts what it was sent
    assert {run_id: store.stored_bytes(run_id) for run_id in RUNS} == whole
    store.close()
    store = Store(path)  # opened again: nothing more to do, same answers
    assert_answers_as_before(store)
    store.close()


def test_the_same_events_stored_afresh_answer_as_before(tmp_path: Path) -> None:
    """The events as the version before stored them (whole), sent again to a new store: what it
    stores answers the same, and what it hands the live fan-out is each event's text as sent."""
    old = sqlite3.connect(DATA / DB)
    store = Store(tmp_path / DB)
    for run_id in RUNS:
        cols = [r[1] for r in old.execute("PRAGMA table_info(runs)")]
        run = dict(zip(cols, old.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone(), strict=True))
        store.create_run({**run, **{k: orjson.loads(run[k]) for k in ("config", "summary", "layers")}})
        texts = [t for (t,) in old.execute("SELECT data FROM events WHERE run_id = ? ORDER BY seq", (run_id,))]
        sent = []
        for i in range(0, len(texts), 7):
            sent += store.append_events_json(run_id, [orjson.loads(t) for t in texts[i : i + 7]])[1]
        assert sent == texts
        assert store.events_json(run_id) == texts
    old.close()
    assert_answers_as_before(store)
    store.close()


def at_version(path: Path, version: int) -> None:
    """Take a database of version 4 (today's main wrote it as 3: its runs have every column) down
    to `version`, as the versions before made them."""
    db = sqlite3.connect(path)
    if version < 4:  # before preset, fork, placement, groups and run_bytes
        for col in ("preset", "fork", "placement"):
            db.execute(f"ALTER TABLE runs DROP COLUMN {col}")
        db.execute("DROP TABLE groups")
        db.execute("DROP TABLE run_bytes")
    if version < 3:
        db.execute("DROP TABLE layer_stats")
    if version < 2:
        for name in ("events_other", "series_seq"):
            db.execute(f"DROP INDEX {name}")
        db.execute("DROP TABLE evals")
        db.execute("DROP TABLE series")
    db.execute(f"PRAGMA user_version = {version}")
    db.commit()
    db.close()


@pytest.mark.parametrize("version", [4, 3, 2, 0])
def test_each_migration_from_the_version_before(tmp_path: Path, version: int) -> None:
    """From each older version through every migration after it, in order: the same answers,
    and the schema of a data dir made new."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    Store(fresh / DB).close()
    path = old_data_dir(tmp_path)
    at_version(path, version)
    store = Store(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert_answers_as_before(store)
    store.close()
    assert schema(path) == schema(fresh / DB)


def test_a_failed_migration_leaves_the_data_dir_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = old_data_dir(tmp_path)
    at_version(path, 2)
    before = schema(path)

    def fails(db: sqlite3.Connection) -> None:
        full = sqlite3.OperationalError("database or disk is full")
        full.sqlite_errorname = "SQLITE_FULL"
        raise full

    monkeypatch.setitem(migrations.MIGRATIONS, 5, fails)  # after 3 and 4 have run
    with pytest.raises(StoreError, match="no room on the disk"):
        Store(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
    assert schema(path) == before
    monkeypatch.undo()
    store = Store(path)  # the next start migrates it
    assert_answers_as_before(store)
    store.close()


def test_a_data_dir_of_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = old_data_dir(tmp_path)
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer gradwatch"):
        Store(path)


ODD = [  # arrays the float32 columns cannot give back as sent: kept in the events row
    [0.1, 0.2],  # float64 values
    [1, 2.5],  # an integer prints without ".0"
    [1e39, 1.5],  # past float32's range
    [True, 0.5],
    ["1.5", 0.5],
    [[0.5], 0.5],
]
EXACT = [  # arrays it can: taken out of the row and put back
    [0.10000000149011612, None],  # a float32 value, a non-finite one (sent as null)
    [-0.0, 1.401298464324817e-45],  # negative zero, float32's smallest
    [3.4028234663852886e38, 0.0],  # its largest
    [float(np.float32(i / 7)) for i in range(99)] + [None],  # past 64 values (put back through numpy)
]


@pytest.mark.parametrize("values", ODD + EXACT, ids=[f"odd{i}" for i in range(len(ODD))] +
                         [f"exact{i}" for i in range(len(EXACT))])
def test_any_array_reads_back_as_sent(tmp_path: Path, values: list) -> None:
    store = Store(tmp_path / DB)
    store.create_run({"id": "a", "name": "a", "status": "running", "config": {}, "created": 0.0, "token": "t"})
    e = {"type": "metrics", "step": 1, "time": 1.5, "loss": 0.5, "accuracy": None, "global_grad_norm": 2,
         "grad_norm": values, "weight_norm": [0.5, 0.25], "update_ratio": [], "extra": "x",
         "stats": {"act_layers": ["r"], "act_mean": values, "eff_lr": [None, 0.5], "bn_feeds": [None]}, "seq": 1}
    sent = store.append_events_json("a", [e, {"type": "alert", "step": 1, "kind": "k", "seq": 2}])[1]
    assert store.events_json("a") == sent
    assert store.events_json("a", since=1) == sent[1:] == store.events_json("a", exclude=("metrics",))
    assert store.events_json("a", types=("metrics",)) == sent[:1]
    row = orjson.loads(store.db.execute("SELECT data FROM events WHERE seq = 1").fetchone()[0])
    assert row["weight_norm"] == [] and row["stats"]["eff_lr"] == []
    assert (row["grad_norm"] == []) is (values in EXACT) and (row["stats"]["act_mean"] == []) is (values in EXACT)
    cols = store.series("a")
    assert cols["weight_norm"].tolist() == [[0.5, 0.25]]
    if values in EXACT:
        assert [None if math.isnan(v) else v for v in cols["grad_norm"][0].tolist()] == values
    store.close()


def test_a_server_on_a_data_dir_of_the_version_before_answers_as_before(tmp_path: Path) -> None:
    """The routes themselves, on a real server: /metrics and the CSV export."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / DB, data / DB)
    server = LiveServer(data).start()
    try:
        for run_id in RUNS:
            got = server.client.get(f"/api/runs/{run_id}/metrics")
            assert got.status_code == 200 and got.text == OLD[run_id]["metrics"]
            got = server.client.get(f"/api/runs/{run_id}/export", params={"format": "csv"})
            assert got.status_code == 200 and got.text == OLD[run_id]["export_csv"]
    finally:
        server.stop()


def test_each_steps_learning_rate_is_a_column_and_a_version_5_data_dir_takes_it_from_its_events(
        tmp_path: Path) -> None:
    """Version 6: series.lr. The probe sends each step's learning rate; /metrics gives it as `lr`
    (and leaves the key out for a run that never sent one, so older runs answer as before), and a
    data dir of version 5 gets the column filled from the events that carry one."""
    from gradwatch.server.routes.runs import history

    old = sqlite3.connect(DATA / DB)
    path = tmp_path / DB
    store = Store(path)
    for run_id in RUNS:
        cols = [r[1] for r in old.execute("PRAGMA table_info(runs)")]
        run = dict(zip(cols, old.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone(), strict=True))
        store.create_run({**run, **{k: orjson.loads(run[k]) for k in ("config", "summary", "layers")}})
        events = [orjson.loads(t) for (t,) in old.execute("SELECT data FROM events WHERE run_id = ? ORDER BY seq",
                                                          (run_id,))]
        if run_id == "f32":  # this one reports its learning rate: a decay
            for e in events:
                if e["type"] == "metrics":
                    e["lr"] = 0.1 / e["step"]
        store.append_events(run_id, events)
    old.close()

    def lrs() -> dict[str, list | None]:
        return {r: history(store, store.get_run(r), 0, 100_000).get("lr") for r in RUNS}

    want = [0.1 / s for s in history(store, store.get_run("f32"), 0, 100_000)["step"]]
    got = lrs()
    assert got["f64"] is None and got["f32"] == pytest.approx(want, rel=1e-12)
    store.close()

    db = sqlite3.connect(path)  # as version 5 stored it: no column, the value in each event's row
    db.execute("ALTER TABLE series DROP COLUMN lr")
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    store = Store(path)
    got = lrs()
    assert got["f64"] is None and got["f32"] == pytest.approx(want, rel=1e-12)
    store.close()
