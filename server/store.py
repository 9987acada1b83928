"""SQLite persistence: runs and every event, keyed (run_id, seq). The source of truth.

WAL journal; ingest batches commit with synchronous=NORMAL (fast, survives a process crash),
run-state transitions with synchronous=FULL (survive a power cut too). Ingest is idempotent:
an event whose (run_id, seq) is already stored is ignored, so a worker may resend freely.

Every write goes through one connection, on the event loop's thread. The big reads (a long
history, a heatmap, an export) run in worker threads inside `snapshot()`, on one of a few
pooled reading connections (WAL: a reader never blocks the writer, nor waits for it), in one
read transaction, so that everything one answer reads comes from one committed state.

Each fact is stored once. A metrics event's per-layer arrays live only in the columnar tables
(`series`, `layer_stats`, float32 blobs); its `events` row keeps the rest of it, with `[]` where
an array was taken out. Reading the events back puts the arrays in again: the JSON is the very
text stored before (the probe sends float32 values, and a float32 read back as a double prints
as the double it was). An array the blob would not give back exactly (float64 values from an
older worker, integers, anything odd) stays in the row as sent.

The schema has a version (PRAGMA user_version); MIGRATIONS take a data dir from each version to
the next, in order, all in one transaction at start-up (docs/operations.md: what a long one does).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from .columns import (
    SERIES_ADDED,
    SERIES_LAYERS,
    SERIES_SCALARS,
    STATS_FIRST,
    STATS_LAYERS,
    num,
    rebuild,
    series_row,
)
from .migrations import INSERT_SERIES, INSERT_STATS, migrate
from .migrations import SCHEMA_VERSION as SCHEMA_VERSION  # noqa: PLC0414 (the store's, re-exported)

# preset: {"name", "variant", "changed"} of a run started from a preset (routes/runs.py), else NULL.
# fork: {"parent", "step", "asked", "changes"} of a run forked from another (server/forks.py), else NULL.
RUN_FIELDS = ("id", "name", "status", "config", "created", "started", "finished", "error",
              "summary", "layers", "token", "last_seq", "kind", "group_id", "preset", "fork", "placement")
JSON_FIELDS = ("config", "summary", "layers", "preset", "fork", "placement")


TOKEN_HASH = "sha256:"  # runs.token holds this + the hex digest of the run's ingest token


def token_digest(token: str) -> str:
    """What the store keeps of a run's ingest token: enough to check one, not to use it. (A
    random 192-bit token needs no salt or slow hash: nobody can guess one from its digest.)"""
    return TOKEN_HASH + hashlib.sha256(token.encode()).hexdigest()


def token_ok(given: str | None, stored: str | None) -> bool:
    """Does `given` match the run's stored token digest? Constant-time."""
    if not given or not stored:
        return False
    return hmac.compare_digest(token_digest(given).encode(), stored.encode())


def private_file(path: Path) -> None:
    """The database and its -wal/-shm files readable by this user only (SQLite creates the
    -wal and -shm files with the database file's mode)."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and p.stat().st_mode & 0o077:
            p.chmod(0o600)


def disk_full(e: BaseException) -> bool:
    """SQLITE_FULL: the disk (or the file system's quota) has no room for the write."""
    return isinstance(e, sqlite3.OperationalError) and getattr(e, "sqlite_errorname", "") == "SQLITE_FULL"


class StoreError(Exception):
    """The database cannot be served (damaged, not a database, read-only): one line that names
    the file and says what to do."""


def writable(path: Path) -> None:
    """The database and its -wal/-shm files take writes, else StoreError: a server on a
    read-only database would start and answer every write with a 500."""
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if p.exists() and not os.access(p, os.W_OK):
            raise StoreError(f"the database file {p} is read-only: make it writable (chmod u+w, or a "
                             "read-write mount), or start with another --data-dir")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        writable(path)
        private_file(path)
        # The writer: every write, and the reads made on the thread that opened the store (the
        # event loop's). Other threads read in `snapshot()`, through a pooled connection (`rdb`).
        self.db = self._connect()
        self.integrity = "ok"  # PRAGMA quick_check at start; a write that finds damage says so
        self.write_error: str | None = None  # the last write's failure, until a write succeeds
        # Room kept for the writes that free room or end runs (a delete, a run's last status) when
        # the disk fills: RESERVE_CHUNKS files of 1 MiB, given back to the file system one at a
        # time on a full disk for those writes only, and taken again once writes succeed.
        self.reserve = [path.with_name(f"gradwatch.reserve.{i}") for i in range(self.RESERVE_CHUNKS)]
        self._take_reserve()
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            # A damaged file (overwritten pages, a copy taken without its -wal mid-checkpoint)
            # opens fine and fails later, on some read or write: find out now. quick_check reads
            # every page once (about 1 s per GiB, cached); the result is /api/health's `integrity`.
            problems = [r[0] for r in self.db.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                lines = [x for row in problems for x in row.splitlines() if not x.startswith("***")]
                raise sqlite3.DatabaseError(f"quick_check: {'; '.join(lines)}")
            self.db.execute("PRAGMA synchronous=NORMAL")
            version = migrate(self.db)  # an older data dir: brought up to date, in one transaction
            if version <= SCHEMA_VERSION:
                self._hash_tokens()
        except sqlite3.DatabaseError as e:
            self.db.close()
            if "readonly" in str(e):
                raise StoreError(f"the database file {path} is read-only ({e}): make it writable, or start "
                                 "with another --data-dir") from None
            if disk_full(e):  # a migration (one transaction) needs room for what it rewrites
                raise StoreError(f"no room on the disk to open the database {path} ({e}): free space, or start "
                                 "with another --data-dir") from None
            first = " ".join(str(e).split())[:200]
            raise StoreError(f"the database {path} is damaged ({first}): restore it from a backup, or move "
                             f"it (and any {path.name}-wal, -shm) aside to start empty; `sqlite3 {path} .recover` "
                             "may save what is readable") from None
        if version > SCHEMA_VERSION:
            self.db.close()
            raise StoreError(f"the database {path} was written by a newer gradwatch (schema version {version}; "
                             f"this one reads up to {SCHEMA_VERSION}): upgrade gradwatch, or start with another "
                             "--data-dir")
        self._owner = threading.get_ident()
        # Reading threads borrow a connection from a small pool for the length of a snapshot.
        # (One per thread would leave SQLite holding file descriptors of every thread that ever
        # read: it cannot close a file another connection of the process has locked.)
        self._idle: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._readers = 0  # connections made for the pool, at most READERS
        self._pool_lock = threading.Lock()
        self._local = threading.local()  # .db: the connection this thread holds, in snapshot()

    RESERVE_CHUNKS = 8  # MiB kept for deletes and final statuses (a delete's WAL pages, many ends)

    def _take_reserve(self) -> None:
        for chunk in self.reserve:
            if chunk.exists():
                continue
            try:
                fd = os.open(chunk, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, 1 << 20)
                finally:
                    os.close(fd)
            except OSError:  # no room for it yet
                chunk.unlink(missing_ok=True)
                return

    def _write(self, fn: Any, essential: bool = False, from_reserve: bool = False) -> Any:
        """Run one write (`fn`, a whole transaction), keeping `write_error` and `integrity` true.
        An `essential` write that finds the disk full gives back the reserve a MiB at a time,
        trying again after each."""
        try:
            result = fn()
        except BaseException as e:
            if self.db.in_transaction:  # SQLite has rolled back itself after some errors (a full disk)
                self.db.execute("ROLLBACK")
            if not isinstance(e, sqlite3.Error):
                raise
            held = [chunk for chunk in self.reserve if chunk.exists()] if essential and disk_full(e) else []
            if held:
                self.write_error = f"disk full: {e}"
                held[-1].unlink(missing_ok=True)
                return self._write(fn, essential=True, from_reserve=True)
            self.write_error = f"disk full: {e}" if disk_full(e) else str(e)
            if not isinstance(e, sqlite3.OperationalError):
                self.integrity = f"damaged: {e}"  # SQLITE_CORRUPT and kin, found by a write
            raise
        if self.write_error is not None and not from_reserve:  # room again (not just the reserve's)
            self.write_error = None
            self._take_reserve()
        return result

    READERS = 4  # big reads at once; more wait their turn (in their thread, not the event loop)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        return db

    @property
    def rdb(self) -> sqlite3.Connection:
        """The connection this thread reads through: the writer's on its own thread, else the
        one this thread's `snapshot()` holds."""
        if threading.get_ident() == self._owner:
            return self.db
        db = getattr(self._local, "db", None)
        if db is None:
            raise RuntimeError("a thread other than the store's reads inside Store.snapshot()")
        return db

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads inside see one committed state (a read transaction on a pooled connection; on
        the writer's thread nothing can commit in between anyway)."""
        if threading.get_ident() == self._owner or getattr(self._local, "db", None) is not None:
            yield
            return
        db = self._borrow()
        self._local.db = db
        try:
            db.execute("BEGIN")
            try:
                yield
            finally:
                db.execute("COMMIT")
        finally:
            self._local.db = None
            self._idle.put(db)

    def _borrow(self) -> sqlite3.Connection:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._pool_lock:
            make = self._readers < self.READERS
            if make:
                self._readers += 1
        if not make:
            return self._idle.get()  # all READERS lent: wait for one
        db = self._connect()
        db.execute("PRAGMA query_only=ON")
        return db

    def _hash_tokens(self) -> None:
        """Ingest tokens stored in clear by an older version: keep only their digests."""
        rows = self.db.execute("SELECT id, token FROM runs WHERE token NOT LIKE ?", (TOKEN_HASH + "%",)).fetchall()
        for run_id, token in rows:
            self._durable("UPDATE runs SET token = :t WHERE id = :id", {"t": token_digest(token), "id": run_id})

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                break
        self.db.close()

    # ---- runs -----------------------------------------------------------------------

    def create_run(self, run: dict[str, Any]) -> None:
        row = {k: run.get(k) for k in RUN_FIELDS}
        for k in JSON_FIELDS:
            row[k] = None if row[k] is None else orjson.dumps(row[k]).decode()
        row["summary"] = row["summary"] or "{}"
        row["last_seq"] = row["last_seq"] or 0
        row["kind"] = row["kind"] or "local"
        cols = ", ".join(RUN_FIELDS)
        marks = ", ".join(f":{k}" for k in RUN_FIELDS)
        self._durable(f"INSERT INTO runs ({cols}) VALUES ({marks})", row)

    def update_run(self, run_id: str, durable: bool = False, essential: bool = False, **changes: Any) -> None:
        if not changes:
            return
        for k in JSON_FIELDS:
            if k in changes and changes[k] is not None:
                changes[k] = orjson.dumps(changes[k]).decode()
        sets = ", ".join(f"{k} = :{k}" for k in changes)
        sql = f"UPDATE runs SET {sets} WHERE id = :_id"
        params = {**changes, "_id": run_id}
        if durable:
            self._durable(sql, params, essential)
        else:
            self._write(lambda: self.db.execute(sql, params))

    def _durable(self, sql: str, params: dict[str, Any], essential: bool = False) -> None:
        """A state transition: committed with synchronous=FULL."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self._write(lambda: self.db.execute(sql, params), essential)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.rdb.execute(f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE id = ?", (run_id,))
        row = cur.fetchone()
        return None if row is None else _run_row(row)

    def list_runs(self, statuses: tuple[str, ...] | None = None, group_id: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE 1"
        params: tuple[str, ...] = ()
        if statuses:
            sql += f" AND status IN ({', '.join('?' * len(statuses))})"
            params = statuses
        if group_id is not None:
            sql += " AND group_id = ?"
            params += (group_id,)
        sql += " ORDER BY created DESC"
        return [_run_row(r) for r in self.rdb.execute(sql, params)]

    def delete_run(self, run_id: str) -> None:
        """Essential: a delete is how a full disk gets room back."""
        def delete() -> None:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM series WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM evals WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM layer_stats WHERE run_id = ?", (run_id,))
            self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self.db.execute("DELETE FROM run_bytes WHERE run_id = ?", (run_id,))
            self.db.execute("COMMIT")
        self._write(delete, essential=True)

    def stored_bytes(self, run_id: str) -> int:
        """Bytes of event JSON the run has stored (its events' sizes, summed once per run made by
        an older version, then kept up to date by append_events)."""
        row = self.rdb.execute("SELECT bytes FROM run_bytes WHERE run_id = ?", (run_id,)).fetchone()
        if row is not None:
            return row[0]
        total = self.rdb.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM events WHERE run_id = ?",
                                 (run_id,)).fetchone()[0]
        if threading.get_ident() == self._owner:
            self.db.execute("INSERT OR IGNORE INTO run_bytes VALUES (?, ?)", (run_id, total))
        return total

    # ---- groups ---------------------------------------------------------------------

    def create_group(self, group_id: str, name: str, spec: dict[str, Any]) -> None:
        self._durable("INSERT INTO groups (id, name, spec, created) VALUES (:id, :name, :spec, :created)",
                      {"id": group_id, "name": name, "spec": orjson.dumps(spec).decode(), "created": time.time()})

    def get_group(self, group_id: str) -> dict[str, Any] | None:
        row = self.rdb.execute("SELECT id, name, spec, created FROM groups WHERE id = ?", (group_id,)).fetchone()
        return None if row is None else {"id": row[0], "name": row[1], **orjson.loads(row[2]), "created": row[3]}

    def list_groups(self) -> list[dict[str, Any]]:
        rows = self.rdb.execute("SELECT id, name, spec, created FROM groups ORDER BY created DESC").fetchall()
        return [{"id": r[0], "name": r[1], **orjson.loads(r[2]), "created": r[3]} for r in rows]

    # ---- events ---------------------------------------------------------------------

    def append_events(self, run_id: str, events: list[dict[str, Any]],
                      essential: bool = False) -> tuple[list[dict[str, Any]], int]:
        """Store the events not stored yet; returns (the new ones, the run's last seq).
        `essential`: the server's own end of a run, which may use the disk's reserve."""
        new, _, last = self.append_events_json(run_id, events, essential)
        return new, last

    def append_events_json(self, run_id: str, events: list[dict[str, Any]],
                           essential: bool = False) -> tuple[list[dict[str, Any]], list[str], int]:
        """append_events, with the JSON each new event was stored as (the live fan-out sends
        the same text: serialised once)."""
        return self.append_many([(run_id, events)], essential)[0]

    def append_many(self, batches: list[tuple[str, list[dict[str, Any]]]],
                    essential: bool = False) -> list[tuple[list[dict[str, Any]], list[str], int]]:
        """Several runs' batches in one transaction (one commit for all: a commit costs as much as
        storing a few events); per batch, as append_events_json. All or nothing."""
        def write() -> list[tuple[list[dict[str, Any]], list[str], int]]:
            self.db.execute("BEGIN")
            out = [self._append(run_id, events) for run_id, events in batches]
            self.db.execute("COMMIT")
            return out
        return self._write(write, essential)

    def _append(self, run_id: str, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str], int]:
        # One statement per table for the whole batch (executemany): the per-event Python work
        # is the JSON and the row tuples, nothing per statement. The caller holds a transaction.
        new: list[dict[str, Any]] = []
        texts: list[str] = []
        self.stored_bytes(run_id)  # its row, counted from its events for a run of an older version
        seqs = [e["seq"] for e in events]
        have = {r[0] for r in self.db.execute("SELECT seq FROM events WHERE run_id = ? AND seq BETWEEN ? AND ?",
                                              (run_id, min(seqs), max(seqs)))} if seqs else set()
        rows, series, evals, stats = [], [], [], []
        for e in events:
            seq = e["seq"]
            if seq in have:  # stored already (a resend), or twice in this batch: the first one counts
                continue
            have.add(seq)
            data = orjson.dumps(e).decode()  # the event as sent: fanned out, and counted
            new.append(e)
            texts.append(data)
            kept = data
            if e["type"] == "metrics":
                row = series_row(run_id, e)
                series.append(row[0])
                if e.get("val_accuracy") is not None or e.get("val_loss") is not None:
                    evals.append((run_id, seq, row[0][2], num(e.get("val_loss")), num(e.get("val_accuracy"))))
                if row[1] is not None:
                    stats.append(row[1])
                if row[2] is not None:
                    kept = orjson.dumps(row[2]).decode()
            rows.append((run_id, seq, e["type"], e.get("step"), kept))
        self.db.executemany("INSERT OR IGNORE INTO events (run_id, seq, type, step, data) VALUES (?, ?, ?, ?, ?)", rows)
        if series:
            self.db.executemany(INSERT_SERIES, series)
        if evals:
            self.db.executemany("INSERT OR IGNORE INTO evals VALUES (?, ?, ?, ?, ?)", evals)
        if stats:
            self.db.executemany(INSERT_STATS, stats)
        last = self.db.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0] or 0
        self.db.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (last, run_id))
        size = sum(len(t) for t in texts)  # characters of JSON received (a run's limit counts these)
        if size:
            self.db.execute("UPDATE run_bytes SET bytes = bytes + ? WHERE run_id = ?", (size, run_id))
        return new, texts, last

    def events(self, run_id: str, since: int = 0, types: tuple[str, ...] | None = None,
               exclude: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        return [orjson.loads(text) for text in self.events_json(run_id, since, types, exclude)]

    def events_json(self, run_id: str, since: int = 0, types: tuple[str, ...] | None = None,
                    exclude: tuple[str, ...] | None = None) -> list[str]:
        """The events after `since`, in seq order, as the JSON objects they were stored as (a
        metrics event's arrays put back from the columns: the same text)."""
        # Without metrics: the partial index events_other (its WHERE must be written out as is),
        # and nothing to put back.
        if exclude == ("metrics",):
            sql = "SELECT data FROM events INDEXED BY events_other WHERE run_id = ? AND seq > ? AND type != 'metrics'"
            params: list[Any] = [run_id, since]
            if types:
                sql += f" AND type IN ({', '.join('?' * len(types))})"
                params += types
            return [r[0] for r in self.rdb.execute(sql + " ORDER BY seq", params)]
        sql = (f"SELECT e.data, {', '.join('s.' + k for k in SERIES_LAYERS)}, "
               f"{', '.join('l.' + k for k in STATS_LAYERS)} FROM events e "
               "LEFT JOIN series s ON s.run_id = e.run_id AND s.seq = e.seq "
               "LEFT JOIN layer_stats l ON l.run_id = e.run_id AND l.seq = e.seq "
               "WHERE e.run_id = ? AND e.seq > ?")
        params = [run_id, since]
        if types:
            sql += f" AND e.type IN ({', '.join('?' * len(types))})"
            params += types
        if exclude:
            sql += f" AND e.type NOT IN ({', '.join('?' * len(exclude))})"
            params += exclude
        return [r[0] if r[1] is None or "[]" not in r[0] else rebuild(r[0], r[1:])
                for r in self.rdb.execute(sql + " ORDER BY e.seq", params)]

    def val_points(self, run_id: str, since: int = 0) -> list[tuple]:
        """(step, val_loss, val_accuracy) of every evaluated step, without parsing the rest."""
        return self.rdb.execute(
            "SELECT step, val_loss, val_accuracy FROM evals WHERE run_id = ? AND seq > ? ORDER BY seq",
            (run_id, since),
        ).fetchall()

    def series_seqs(self, run_id: str, since: int = 0) -> list[int]:
        cur = self.rdb.execute("SELECT seq FROM series INDEXED BY series_seq WHERE run_id = ? AND seq > ? "
                              "ORDER BY seq", (run_id, since))
        return [r[0] for r in cur]

    def stats_seqs(self, run_id: str, since: int = 0) -> list[int]:
        cur = self.rdb.execute("SELECT seq FROM layer_stats WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, since))
        return [r[0] for r in cur]

    def layer_stats(self, run_id: str, seqs: list[int], columns: tuple[str, ...] = STATS_LAYERS) -> dict[str, Any]:
        """The statistics of the metrics events `seqs`: step (T,), the per-layer arrays `columns`
        (T, L) float32, and the layer names they refer to (from the last of those events). A
        statistic added to the registry since the run's events were sent (NULL in every row) is
        left out."""
        cols = ", ".join(("seq", "step") + columns)
        rows = self._rows_at(f"SELECT {cols} FROM layer_stats", run_id, seqs)
        out: dict[str, Any] = {"step": [r[1] for r in rows]}
        for k, name in enumerate(columns, start=2):
            if name not in STATS_FIRST and all(r[k] is None for r in rows):
                continue
            out[name] = [np.frombuffer(r[k] or b"", dtype=np.float32) for r in rows]  # serialised by orjson
        return {**self._stats_names(run_id, rows[-1][0] if rows else None), **out}

    def _stats_names(self, run_id: str, seq: int | None) -> dict[str, list]:
        """The layer names the statistics of metrics event `seq` refer to (kept in the event)."""
        names: dict[str, list] = {"act_layers": [], "bn_layers": [], "bn_feeds": []}
        if seq is None:
            return names
        row = self.rdb.execute("SELECT data FROM events WHERE run_id = ? AND seq = ?", (run_id, seq)).fetchone()
        stats = orjson.loads(row[0]).get("stats") or {}
        return {k: stats.get(k) or [] for k in names}

    def _rows_at(self, select: str, run_id: str, seqs: list[int]) -> list[tuple]:
        """`select` (SELECT … FROM table) of the rows of run_id whose seq is in `seqs`, in seq
        order; 500 at a time (SQLite's limit on bound parameters)."""
        rows: list[tuple] = []
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            rows += self.rdb.execute(f"{select} WHERE run_id = ? AND seq IN ({', '.join('?' * len(chunk))}) "
                                    "ORDER BY seq", (run_id, *chunk)).fetchall()
        return rows

    def stats_matrix(self, run_id: str, column: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """One per-layer statistic of every stats step: steps (T,), values (T, L) float32, and the
        layer names (as layer_stats gives them)."""
        assert column in STATS_LAYERS
        rows = self.rdb.execute(f"SELECT seq, step, {column} FROM layer_stats WHERE run_id = ? ORDER BY seq",
                               (run_id,)).fetchall()
        names = self._stats_names(run_id, rows[-1][0] if rows else None)
        return np.array([r[1] for r in rows], dtype=np.float64), _matrix([r[2] for r in rows]), names

    def series(self, run_id: str, since: int = 0, seqs: list[int] | None = None,
               columns: tuple[str, ...] = SERIES_SCALARS + SERIES_ADDED + SERIES_LAYERS) -> dict[str, np.ndarray]:
        """Metrics as arrays: scalars (T,), per-layer series (T, L) float32; all rows after
        `since`, or exactly the rows `seqs`."""
        cols = ", ".join(("seq",) + columns)
        if seqs is None:
            rows = self.rdb.execute(
                f"SELECT {cols} FROM series WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, since)
            ).fetchall()
        else:
            rows = self._rows_at(f"SELECT {cols} FROM series", run_id, seqs)
        out: dict[str, np.ndarray] = {"seq": np.array([r[0] for r in rows], dtype=np.int64)}
        for k, name in enumerate(columns, start=1):
            if name in SERIES_LAYERS:
                out[name] = _matrix([r[k] for r in rows])
            else:
                out[name] = np.array([np.nan if r[k] is None else r[k] for r in rows], dtype=np.float64)
        return out


def _matrix(blobs: list[bytes]) -> np.ndarray:
    """Rows of float32 bytes as a (T, L) array. A row of another width than the run's usual one
    (an event sent malformed) is cut or padded with NaN rather than spoiling the run's history.
    NULL (a statistic the event did not carry) is a row of NaN."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    blobs = [b"" if b is None else b for b in blobs]
    sizes = {len(b) for b in blobs}
    if len(sizes) == 1:
        return np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
    lengths = [len(b) for b in blobs]
    width = max(sizes, key=lambda s: (lengths.count(s), s)) // 4  # the most common width (ties: the wider)
    out = np.full((len(blobs), width), np.nan, dtype=np.float32)
    for i, b in enumerate(blobs):
        row = np.frombuffer(b[: 4 * width], dtype=np.float32)
        out[i, : len(row)] = row
    return out


def _run_row(row: tuple) -> dict[str, Any]:
    run = dict(zip(RUN_FIELDS, row, strict=True))
    for k in JSON_FIELDS:
        run[k] = None if run[k] is None else orjson.loads(run[k])
    return run


