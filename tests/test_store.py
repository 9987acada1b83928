"""The SQLite store on its own: what history reads, and a data dir written by an older version."""

from __future__ import annotations

import math
import sqlite3
import threading
from pathlib import Path

import numpy as np
import orjson
import pytest
from gradwatch.server.routes.runs import _buckets, _cell32, _csv_cells32
from gradwatch.server.store import SCHEMA_VERSION, Store


def metrics(seq: int, step: int, val: float | None = None) -> dict:
    e = {"type": "metrics", "seq": seq, "step": step, "time": 1.0 + step, "loss": 1.0 / step, "accuracy": 0.5,
         "global_grad_norm": 2.0, "grad_norm": [1.0, float(step)], "weight_norm": [3.0, 4.0],
         "update_ratio": [1e-3, None]}
    if val is not None:
        e["val_loss"], e["val_accuracy"] = val, 1 - val
    if step == 1 or step % 4 == 0:  # stats_every 4
        e["stats"] = {"act_layers": ["relu1", "relu2"], "act_mean": [0.5, 0.25], "act_std": [1.0, 2.0],
                      "dead_frac": [0.0, None], "bn_layers": ["bn1"], "bn_mean_drift": [0.1], "bn_var_drift": [0.2],
                      "bn_gamma_norm": [1.0], "bn_beta_norm": [0.0], "bn_feeds": ["fc1.weight"],
                      "eff_lr": [step / 1000]}
    return e


def new_run(store: Store, run_id: str) -> None:
    store.create_run({"id": run_id, "name": run_id, "status": "running", "config": {}, "created": 0.0, "token": "t"})


def history_events(run_id: str, n: int) -> list[dict]:
    out = [{"type": "run.started", "seq": 1, "layers": []}]
    for step in range(1, n + 1):
        out.append(metrics(step + 1, step, 0.25 if step % 5 == 0 else None))
        if step == 7:
            out.append({"type": "alert", "seq": len(out) + 1, "step": step})
    for i, e in enumerate(out, start=1):
        e["seq"] = i
    return out


def test_history_reads(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")
    new_run(store, "a")
    new_run(store, "b")
    store.append_events("a", history_events("a", 20))
    store.append_events("b", history_events("b", 3))
    # the events of history: everything but metrics, in seq order, this run only
    others = store.events("a", exclude=("metrics",))
    assert [e["type"] for e in others] == ["run.started", "alert"]
    assert [e["type"] for e in store.events("a", since=1, exclude=("metrics",))] == ["alert"]
    assert len(store.events("a")) == 22
    assert store.val_points("a") == [(5, 0.25, 0.75), (10, 0.25, 0.75), (15, 0.25, 0.75), (20, 0.25, 0.75)]
    seqs = store.series_seqs("a")
    assert len(seqs) == 20 and seqs == sorted(seqs) and 9 not in seqs  # seq 9 is the alert
    assert store.series_seqs("a", since=seqs[-2]) == seqs[-1:]
    # the every-stats_every-steps statistics, columnar, with their layer names
    stats = store.layer_stats("a", store.stats_seqs("a"))
    assert stats["step"] == [1, 4, 8, 12, 16, 20]
    assert stats["act_layers"] == ["relu1", "relu2"] and stats["bn_feeds"] == ["fc1.weight"]
    assert [row[0] for row in stats["eff_lr"]] == pytest.approx([s / 1000 for s in (1, 4, 8, 12, 16, 20)])
    assert stats["dead_frac"][0][0] == 0.0 and math.isnan(stats["dead_frac"][0][1])
    assert store.layer_stats("a", store.stats_seqs("a", since=seqs[-2]))["step"] == [20]
    assert store.layer_stats("a", [])["step"] == [] and store.layer_stats("a", [])["act_layers"] == []
    store.delete_run("a")
    assert store.val_points("a") == [] and store.series_seqs("a") == [] and len(store.series_seqs("b")) == 3


@pytest.mark.parametrize("with_series", [False, True])
def test_an_older_data_dir_is_migrated_once(tmp_path: Path, with_series: bool) -> None:
    """A data dir from before `evals` (and, older still, before `series`): its history is
    rebuilt from the stored events on first open, and later opens leave it alone."""
    path = tmp_path / "db.sqlite3"
    store = Store(path)
    new_run(store, "old")
    events = history_events("old", 10)
    store.append_events("old", events)
    store.close()
    db = sqlite3.connect(path)
    # as older versions stored them: every event whole in `events`
    db.executemany("UPDATE events SET data = ? WHERE run_id = 'old' AND seq = ?",
                   [(orjson.dumps(e).decode(), e["seq"]) for e in events])
    db.execute("DROP TABLE evals")
    db.execute("DROP TABLE layer_stats")
    if not with_series:
        db.execute("DROP TABLE series")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()

    store = Store(path)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    cols = store.series("old")
    assert cols["step"].tolist() == list(range(1, 11))
    assert cols["grad_norm"][:, 1].tolist() == [float(s) for s in range(1, 11)]
    assert store.val_points("old") == [(5, 0.25, 0.75), (10, 0.25, 0.75)]
    assert store.layer_stats("old", store.stats_seqs("old"))["step"] == [1, 4, 8]
    # new events after the migration land in both tables as usual, and nothing is duplicated
    new, last = store.append_events("old", [metrics(len(events) + 1, 11, 0.5)])
    assert len(new) == 1 and last == len(events) + 1
    assert store.val_points("old")[-1] == (11, 0.5, 0.5)
    store.close()
    store = Store(path)
    assert len(store.series_seqs("old")) == 11 and len(store.val_points("old")) == 3
    stored = store.events("old")
    assert [e["seq"] for e in stored] == list(range(1, len(events) + 2))
    assert orjson.loads(orjson.dumps(stored[-1]))["val_accuracy"] == 0.5


def test_a_malformed_event_is_stored_and_its_bad_values_are_gaps(tmp_path: Path) -> None:
    """An event a worker got wrong (or a hand-made one on the ingest socket) must not refuse the
    batch it came in (the worker would resend it forever): stored whole, bad numbers as gaps."""
    store = Store(tmp_path / "db.sqlite3")
    new_run(store, "a")
    bad = {"type": "metrics", "seq": 1, "step": "one", "loss": "abc", "accuracy": True, "global_grad_norm": [1],
           "grad_norm": ["x", 1e300], "weight_norm": "nope", "update_ratio": [{}, 1.0, 2.0, 3.0],
           "val_accuracy": 0.5, "val_loss": "?", "stats": {"eff_lr": "zz", "dead_frac": [0.5, "y"]}}
    new, last = store.append_events("a", [bad, metrics(2, 2), metrics(3, 3)])
    assert len(new) == 3 and last == 3
    cols = store.series("a")
    assert math.isnan(cols["loss"][0]) and math.isnan(cols["accuracy"][0]) and cols["loss"][1] == 0.5
    g = cols["grad_norm"][0].tolist()
    assert math.isnan(g[0]) and g[1] == math.inf  # not a number: a gap; past float32: inf
    # rows of the wrong width are cut or padded to the run's (2 layers here), not a broken history
    assert cols["weight_norm"].shape == (3, 2) and np.isnan(cols["weight_norm"][0]).all()
    assert cols["update_ratio"].shape == (3, 2) and math.isnan(cols["update_ratio"][0][0])
    assert cols["update_ratio"][0][1] == 1.0 and cols["weight_norm"][1].tolist() == [3.0, 4.0]
    assert cols["step"].tolist() == [0, 2, 3]  # a step that is not an integer: 0
    assert store.val_points("a") == [(0, None, 0.5)]
    st = store.layer_stats("a", store.stats_seqs("a"))
    assert st["step"] == [0] and len(st["eff_lr"][0]) == 0 and math.isnan(st["dead_frac"][0][1])
    assert store.events("a")[0]["loss"] == "abc"  # the event itself, as sent


def test_a_reading_thread_sees_one_committed_state_while_the_writer_goes_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "db.sqlite3")  # this thread is the writer (the event loop's, in the server)
    new_run(store, "a")
    store.append_events("a", history_events("a", 10))
    first_read, written = threading.Event(), threading.Event()
    seen: dict[str, object] = {}

    def reader() -> None:
        with pytest.raises(RuntimeError, match="snapshot"):  # a thread reads in a snapshot, never bare
            store.get_run("a")
        with store.snapshot():
            assert store.rdb is not store.db  # a reading connection of the pool
            seen["before"] = (store.get_run("a")["last_seq"], store.series_seqs("a"))
            first_read.set()
            written.wait(10)
            seen["during"] = (store.get_run("a")["last_seq"], store.series_seqs("a"))
        with store.snapshot():
            seen["after"] = (store.get_run("a")["last_seq"], store.series_seqs("a"))

    t = threading.Thread(target=reader)
    t.start()
    assert first_read.wait(10)
    more = [metrics(seq, seq - 1) for seq in range(13, 16)]  # steps 12..14, after the 12 stored events
    store.append_events("a", more)  # commits while the reader's snapshot is open: WAL does not wait
    written.set()
    t.join(10)
    last, seqs = seen["before"]
    assert seen["during"] == (last, seqs) and seqs[-1] == last  # the run row and its series agree
    assert seen["after"][0] == 15 and seen["after"][1] == seqs + [13, 14, 15]
    # Many reading threads, a few connections: they are lent, not made per thread.
    got: list[int] = []

    def read_once() -> None:
        with store.snapshot():
            got.append(store.get_run("a")["last_seq"])

    for _ in range(3):
        batch = [threading.Thread(target=read_once) for _ in range(12)]
        for t in batch:
            t.start()
        for t in batch:
            t.join(10)
    assert got == [15] * 36 and 1 <= store._readers <= Store.READERS
    store.close()


def test_csv_cells_are_the_shortest_float32_and_keep_infinities() -> None:
    m = np.array([[0.1, 1e-5, np.nan], [np.inf, -np.inf, 3.0], [2.5e30, -0.0, 1.0]], dtype=np.float32)
    rows = _csv_cells32(m)
    assert rows[1] == "inf,-inf,3.0" == ",".join(_cell32(v) for v in m[1])  # JSON has no infinity
    for i, row in enumerate(rows):  # each cell reads back as the stored float32 (NaN: empty)
        cells = row.split(",")
        assert [np.float32(c) if c else None for c in cells] == [None if np.isnan(v) else v for v in m[i]]
    assert _csv_cells32(np.zeros((2, 0), dtype=np.float32)) == [None, None]
    assert _csv_cells32(np.zeros((0, 3), dtype=np.float32)) == []


@pytest.mark.parametrize(("n", "buckets"), [(100_000, 500), (17, 5), (1, 1), (30_000, 2), (9_000, 9_000)])
def test_heatmap_buckets_taken_a_few_rows_at_a_time_equal_one_reduceat(n: int, buckets: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.standard_normal((n, 7)).astype(np.float32)
    values[rng.random((n, 7)) < 0.01] = np.nan  # gaps: fmax/fmin skip them
    starts = np.unique(np.linspace(0, n, num=buckets, endpoint=False).astype(np.int64))
    for ufunc in (np.fmax, np.fmin):
        whole = ufunc.reduceat(values, starts, axis=0)
        for rows in (1, 100, 8192):
            assert np.array_equal(_buckets(ufunc, values, starts, rows), whole, equal_nan=True)
