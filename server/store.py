"""SQLite persistence: runs and every event, keyed (run_id, seq). The source of truth.

WAL journal; ingest batches commit with synchronous=NORMAL (fast, survives a process crash),
run-state transitions with synchronous=FULL (survive a power cut too). Ingest is idempotent:
an event whose (run_id, seq) is already stored is ignored, so a worker may resend freely.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
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
    group_id TEXT
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step INTEGER,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
"""

RUN_FIELDS = ("id", "name", "status", "config", "created", "started", "finished", "error",
              "summary", "layers", "token", "last_seq", "kind", "group_id")
JSON_FIELDS = ("config", "summary", "layers")


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        # One connection, used from the event loop's thread only.
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
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

    def update_run(self, run_id: str, durable: bool = False, **changes: Any) -> None:
        if not changes:
            return
        for k in JSON_FIELDS:
            if k in changes and changes[k] is not None:
                changes[k] = orjson.dumps(changes[k]).decode()
        sets = ", ".join(f"{k} = :{k}" for k in changes)
        sql = f"UPDATE runs SET {sets} WHERE id = :_id"
        params = {**changes, "_id": run_id}
        if durable:
            self._durable(sql, params)
        else:
            self.db.execute(sql, params)

    def _durable(self, sql: str, params: dict[str, Any]) -> None:
        """A state transition: committed with synchronous=FULL."""
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            self.db.execute(sql, params)
        finally:
            self.db.execute("PRAGMA synchronous=NORMAL")

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        cur = self.db.execute(f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE id = ?", (run_id,))
        row = cur.fetchone()
        return None if row is None else _run_row(row)

    def list_runs(self, statuses: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(RUN_FIELDS)} FROM runs"
        params: tuple[str, ...] = ()
        if statuses:
            sql += f" WHERE status IN ({', '.join('?' * len(statuses))})"
            params = statuses
        sql += " ORDER BY created DESC"
        return [_run_row(r) for r in self.db.execute(sql, params)]

    def delete_run(self, run_id: str) -> None:
        self.db.execute("BEGIN")
        self.db.execute("DELETE FROM events WHERE run_id = ?", (run_id,))
        self.db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        self.db.execute("COMMIT")

    # ---- events ---------------------------------------------------------------------

    def append_events(self, run_id: str, events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        """Store the events not stored yet; returns (the new ones, the run's last seq)."""
        new = []
        self.db.execute("BEGIN")
        try:
            for e in events:
                cur = self.db.execute(
                    "INSERT OR IGNORE INTO events (run_id, seq, type, step, data) VALUES (?, ?, ?, ?, ?)",
                    (run_id, e["seq"], e["type"], e.get("step"), orjson.dumps(e).decode()),
                )
                if cur.rowcount:
                    new.append(e)
            last = self.db.execute("SELECT MAX(seq) FROM events WHERE run_id = ?", (run_id,)).fetchone()[0] or 0
            self.db.execute("UPDATE runs SET last_seq = ? WHERE id = ?", (last, run_id))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return new, last

    def events(self, run_id: str, since: int = 0, types: tuple[str, ...] | None = None,
               exclude: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        sql = "SELECT data FROM events WHERE run_id = ? AND seq > ?"
        params: list[Any] = [run_id, since]
        if types:
            sql += f" AND type IN ({', '.join('?' * len(types))})"
            params += types
        if exclude:
            sql += f" AND type NOT IN ({', '.join('?' * len(exclude))})"
            params += exclude
        sql += " ORDER BY seq"
        return [orjson.loads(r[0]) for r in self.db.execute(sql, params)]

    def val_points(self, run_id: str, since: int = 0) -> list[tuple]:
        """(step, val_loss, val_accuracy) of every evaluated step, without parsing the rest."""
        return self.db.execute(
            "SELECT step, json_extract(data, '$.val_loss'), json_extract(data, '$.val_accuracy') "
            "FROM events WHERE run_id = ? AND seq > ? AND type = 'metrics' "
            "AND json_extract(data, '$.val_accuracy') IS NOT NULL ORDER BY seq",
            (run_id, since),
        ).fetchall()

    def metrics_seqs(self, run_id: str, since: int = 0) -> list[int]:
        cur = self.db.execute(
            "SELECT seq FROM events WHERE run_id = ? AND seq > ? AND type = 'metrics' ORDER BY seq",
            (run_id, since),
        )
        return [r[0] for r in cur]

    def events_by_seq(self, run_id: str, seqs: list[int]) -> list[dict[str, Any]]:
        out = []
        for i in range(0, len(seqs), 500):
            chunk = seqs[i : i + 500]
            cur = self.db.execute(
                f"SELECT data FROM events WHERE run_id = ? AND seq IN ({', '.join('?' * len(chunk))}) ORDER BY seq",
                (run_id, *chunk),
            )
            out += [orjson.loads(r[0]) for r in cur]
        return out


def _run_row(row: tuple) -> dict[str, Any]:
    run = dict(zip(RUN_FIELDS, row, strict=True))
    for k in JSON_FIELDS:
        run[k] = None if run[k] is None else orjson.loads(run[k])
    return run


def now() -> float:
    return time.time()

