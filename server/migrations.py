"""The store's schema, and how a data dir made by an older version reaches it.

PRAGMA user_version says which schema a data dir has. A new data dir gets SCHEMA at
SCHEMA_VERSION. An older one goes through each migration after its version, in order, all in
one transaction: a failure (a full disk, the server stopped) leaves it as it was, and the next
start tries again. Each migration takes a database of the version before it to its own.

  0  runs and events (and maybe `series`: it came before the version number)
  1  never existed
  2  + `evals`, the two indexes, `series` for every metrics event
  3  + `layer_stats`
  4  + runs.preset, runs.fork, runs.placement, `groups`, `run_bytes`: added while the version
     stayed 3, so a data dir of version 3 may have any of them
  5  a metrics event's per-layer arrays only in the columns, not again in its `events` row
     (server/columns.py); run_bytes counted for every run before its rows shrink
  6  + series.lr (the learning rate of each step, from the events that carry one)

A per-layer statistic added to the registry (gradwatch.stats) needs no version: at every start,
registry_columns adds a nullable BLOB column for each stored statistic its table lacks (inside
the same transaction). Rows written before have NULL there, and answers leave the statistic out
for a run that never sent it. Every insert names its columns, so a column added this way never
shifts another.

A migration that reads every metrics event (2, 3, 5) takes time on a big store: 3 to 5 (with 6)
took 1.1-1.3 s for 5000 steps of 26 tensors and 1.4-1.8 s for 3000 of 300 on the shared 2-core
VM at load 6-12, so about 4 and 10 minutes per million steps (docs/operations.md).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator

import orjson

from .columns import SERIES_COLUMNS, SERIES_LAYERS, STATS_COLUMNS, STATS_LAYERS, pack, series_row

log = logging.getLogger("gradwatch.store")

SCHEMA_VERSION = 6

RUNS = """CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    config TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    error TEXT,
    summary TEXT NOT NULL DEFAULT '{}',
    layers TEXT,
    token TEXT NOT NULL,
    last_seq INTEGER NOT NULL DEFAULT 0,
    kind TEXT NOT NULL DEFAULT 'local',
    group_id TEXT,
    preset TEXT,
    fork TEXT,
    placement TEXT
)"""
# preset: {"name", "variant", "changed"} of a run started from a preset (routes/runs.py);
# fork: {"parent", "step", "asked", "changes"} of a fork (server/forks.py); placement: where its
# worker ran, {"node", "gpu"}, kept after the run ends. NULL otherwise.
RUNS_ADDED = (("group_id", "TEXT"), ("preset", "TEXT"), ("fork", "TEXT"), ("placement", "TEXT"))

# Every event as JSON; a metrics event without what `series` and `layer_stats` hold (columns.py).
EVENTS = """CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step INTEGER,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID"""

# The metrics events, columnar: per-layer arrays as float32 blobs, so history and heatmap
# queries read numbers, not JSON. Written in the same transaction as `events`.
SERIES = """CREATE TABLE IF NOT EXISTS series (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    time REAL,
    loss REAL,
    accuracy REAL,
    global_grad_norm REAL,
    grad_norm BLOB NOT NULL,
    weight_norm BLOB NOT NULL,
    update_ratio BLOB NOT NULL,
    lr REAL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID"""
SERIES_ADDED = (("lr", "REAL"),)  # columns of `series` after version 2's (to_6)
INSERT_SERIES = (f"INSERT OR IGNORE INTO series ({', '.join(SERIES_COLUMNS)}) "
                 f"VALUES ({', '.join('?' * len(SERIES_COLUMNS))})")
INSERT_STATS = (f"INSERT OR IGNORE INTO layer_stats ({', '.join(STATS_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(STATS_COLUMNS))})")

# Validation points, written with the metrics event that carries them (one per eval_every steps).
EVALS = """CREATE TABLE IF NOT EXISTS evals (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER,
    val_loss REAL,
    val_accuracy REAL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID"""

# The every-stats_every-steps statistics of a metrics event (its `stats`), per-layer arrays as
# float32 blobs: activations (act_*, dead_frac: one value per hidden activation), BatchNorm
# (bn_*_drift, eff_lr: one per BN layer). Their layer names stay in the event itself.
LAYER_STATS = """CREATE TABLE IF NOT EXISTS layer_stats (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    step INTEGER NOT NULL,
    act_mean BLOB NOT NULL,
    act_std BLOB NOT NULL,
    dead_frac BLOB NOT NULL,
    eff_lr BLOB NOT NULL,
    bn_mean_drift BLOB NOT NULL,
    bn_var_drift BLOB NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID"""

# History reads the few non-metrics events of a run without walking its metrics rows, and the
# seqs of its series without reading their blobs.
INDEXES = ("CREATE INDEX IF NOT EXISTS events_other ON events(run_id, seq) WHERE type != 'metrics'",
           "CREATE INDEX IF NOT EXISTS series_seq ON series(run_id, seq)")

GROUPS = """CREATE TABLE IF NOT EXISTS groups (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL
)"""

# Characters of event JSON each run has been sent (its per-run limit, GRADWATCH_RUN_MAX_BYTES).
RUN_BYTES = """CREATE TABLE IF NOT EXISTS run_bytes (
    run_id TEXT PRIMARY KEY,
    bytes INTEGER NOT NULL
) WITHOUT ROWID"""

SCHEMA = (RUNS, EVENTS, SERIES, EVALS, LAYER_STATS, *INDEXES, GROUPS, RUN_BYTES)


def _metrics(db: sqlite3.Connection, where: str = "1", blobs: bool = False, chunk: int = 2000) -> Iterator[list[tuple]]:
    """The metrics events (run_id, seq, data; with `blobs`, then the SERIES_LAYERS and
    STATS_LAYERS blobs of their columns, NULL where there is no row) that match `where`, a chunk
    at a time, in key order: a chunk's rows may be updated before the next is read."""
    sql = "SELECT e.run_id, e.seq, e.data FROM events e"
    if blobs:
        sql = (f"SELECT e.run_id, e.seq, e.data, {', '.join([f's.{k}' for k in SERIES_LAYERS])}, "
               f"{', '.join([f'l.{k}' for k in STATS_LAYERS])} FROM events e "
               "LEFT JOIN series s ON s.run_id = e.run_id AND s.seq = e.seq "
               "LEFT JOIN layer_stats l ON l.run_id = e.run_id AND l.seq = e.seq")
    sql += f" WHERE e.type = 'metrics' AND ({where}) AND (e.run_id, e.seq) > (?, ?) ORDER BY e.run_id, e.seq LIMIT ?"
    after: tuple[str, int] = ("", -(2**63))
    while rows := db.execute(sql, (*after, chunk)).fetchall():
        yield rows
        after = rows[-1][0], rows[-1][1]


def _event(seq: int, data: str) -> dict:
    return {**orjson.loads(data), "seq": seq}


def to_2(db: sqlite3.Connection) -> None:
    """`evals`, the indexes, and `series` (which may be missing, or miss rows), from the events."""
    for sql in (EVENTS, SERIES, EVALS, *INDEXES):  # events: a data dir that never stored one may lack it
        db.execute(sql)
    _series_added(db)  # the rows below are today's: the table takes today's columns first
    registry_columns(db)
    for rows in _metrics(db, "NOT EXISTS (SELECT 1 FROM series x WHERE x.run_id = e.run_id AND x.seq = e.seq)"):
        db.executemany(INSERT_SERIES, [series_row(r[0], _event(r[1], r[2]))[0] for r in rows])
    db.execute("INSERT OR IGNORE INTO evals SELECT run_id, seq, step, json_extract(data, '$.val_loss'), "
               "json_extract(data, '$.val_accuracy') FROM events WHERE type = 'metrics' "
               "AND json_extract(data, '$.val_accuracy') IS NOT NULL")


def to_3(db: sqlite3.Connection) -> None:
    """`layer_stats`, from the metrics events that carry `stats`."""
    db.execute(LAYER_STATS)
    registry_columns(db)  # the rows below are today's
    for rows in _metrics(db, "e.data LIKE '%\"stats\":{%'"):
        made = [series_row(r[0], _event(r[1], r[2]))[1] for r in rows]
        db.executemany(INSERT_STATS, [row for row in made if row is not None])


def to_4(db: sqlite3.Connection) -> None:
    """What version 3's successors added without a version: three columns of runs, two tables."""
    have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    for name, decl in RUNS_ADDED:
        if name not in have:
            db.execute(f"ALTER TABLE runs ADD COLUMN {name} {decl}")
    db.execute(GROUPS)
    db.execute(RUN_BYTES)


def to_5(db: sqlite3.Connection) -> None:
    """Each metrics event's arrays out of its `events` row, where its columns hold them exactly.
    A run's stored-bytes count (its limit) is taken from the rows first, while they are whole."""
    db.execute("INSERT OR IGNORE INTO run_bytes SELECT run_id, SUM(LENGTH(data)) FROM events GROUP BY run_id")
    for rows in _metrics(db, blobs=True):
        slim = [(orjson.dumps(e).decode(), r[0], r[1]) for r in rows if (e := _slim(orjson.loads(r[2]), r[3:]))]
        db.executemany("UPDATE events SET data = ? WHERE run_id = ? AND seq = ?", slim)


def _slim(e: dict, blobs: tuple) -> dict | None:
    """The event without each array that its stored blob (SERIES_LAYERS' then STATS_LAYERS')
    gives back exactly; None when there is none."""
    def same(values: object, blob: bytes | None) -> bool:
        packed, exact = pack(values)
        return exact and packed == blob

    if not isinstance(e, dict):
        return None
    slim: dict = {k: [] for k, blob in zip(SERIES_LAYERS, blobs, strict=False) if same(e.get(k), blob)}
    stats = e.get("stats")
    if isinstance(stats, dict):
        gone = {k: [] for k, blob in zip(STATS_LAYERS, blobs[len(SERIES_LAYERS):], strict=True)
                if same(stats.get(k), blob)}
        if gone:
            slim["stats"] = {**stats, **gone}
    return {**e, **slim} if slim else None


def _series_added(db: sqlite3.Connection) -> None:
    have = {row[1] for row in db.execute("PRAGMA table_info(series)")}
    for name, decl in SERIES_ADDED:
        if name not in have:
            db.execute(f"ALTER TABLE series ADD COLUMN {name} {decl}")


def to_6(db: sqlite3.Connection) -> None:
    """series.lr, from the metrics events that carry one (the probe sends it from this version on;
    an event row keeps its scalars, so it is there)."""
    _series_added(db)
    db.execute("UPDATE series SET lr = (SELECT json_extract(e.data, '$.lr') FROM events e "
               "WHERE e.run_id = series.run_id AND e.seq = series.seq) "
               "WHERE lr IS NULL AND EXISTS (SELECT 1 FROM events e WHERE e.run_id = series.run_id "
               "AND e.seq = series.seq AND e.data LIKE '%\"lr\":%')")


def registry_columns(db: sqlite3.Connection) -> list[str]:
    """The migration generated from the registry (gradwatch.stats): a nullable BLOB column for each
    stored statistic that `series` or `layer_stats` lacks. Returns the columns it added. They
    come after every column a numbered migration adds (SERIES_ADDED), so that a data dir of any
    version ends with the columns in the order a new one has them."""
    added = []
    for table, names in (("series", SERIES_LAYERS), ("layer_stats", STATS_LAYERS)):
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if not have:  # not made yet (an old data dir before the migration that makes it)
            continue
        if table == "series":
            _series_added(db)
        for name in names:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} BLOB")
                added.append(f"{table}.{name}")
    return added


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {2: to_2, 3: to_3, 4: to_4, 5: to_5, 6: to_6}
assert max(MIGRATIONS) == SCHEMA_VERSION


def migrate(db: sqlite3.Connection) -> int:
    """Bring the database to SCHEMA_VERSION (a new one: made at it); returns the version it had.
    A version newer than this one is left alone: the caller refuses it."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    fresh = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone() is None
    if version > SCHEMA_VERSION:
        return version
    db.execute("BEGIN")
    try:
        if fresh:
            for sql in SCHEMA:
                db.execute(sql)
        elif version < SCHEMA_VERSION:
            log.warning("migrating the store from schema version %d to %d", version, SCHEMA_VERSION)
            registry_columns(db)  # the migrations below read and write today's columns
            for target in range(version + 1, SCHEMA_VERSION + 1):
                if target in MIGRATIONS:
                    MIGRATIONS[target](db)
        added = registry_columns(db)
        if added and not fresh:
            log.warning("the store takes the registry's new statistics: %s", ", ".join(added))
        if version != SCHEMA_VERSION:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return version
