"""The life of a run: its statuses, who moves it between them, and the one place that does.

`TRANSITIONS` below is the table of every move and who makes it (docs/architecture.md shows
it; tests/fast/test_lifecycle.py checks that they agree); `Lifecycle.transition()` refuses a move it
does not list. A run is created `queued` (a local run) or `running` (an external one, the
user's own loop, which is running as soon as it connects).

A terminal status is stored with the run's end (`finished`, the reason in `error`): the server
ends a run by storing a `run.finished` event (JobManager.finalize), and ingest applies it,
as it does a worker's own, through `transition()`.

Everything the server holds about one run while it lives is one `RunState` in
`Lifecycle.runs`: its launcher handle and where it runs, its worker's connection, control
messages waiting for that connection, the liveness clocks. A run's state is dropped once its
status is terminal and its worker is gone (until then it holds a worker slot).

The status set is defined here once: the CLI's `--status` choices, the API's `Run.status`
(and GET /api/statuses, which the page reads) come from `Status`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gradwatch.events import TERMINAL as WIRE_TERMINAL

log = logging.getLogger("gradwatch.lifecycle")


class Status(StrEnum):
    QUEUED = "queued"  # waiting for a worker slot (or, on Ray, for the cluster's resources)
    RUNNING = "running"  # its launch is recorded; its worker trains (or is starting)
    STALLED = "stalled"  # its worker went silent; it may come back
    COMPLETED = "completed"  # trained every step
    STOPPED = "stopped"  # stopped on request
    FAILED = "failed"  # ended by an error, with the reason
    DIVERGED = "diverged"  # the loss or a gradient became non-finite


ALL: tuple[str, ...] = tuple(s.value for s in Status)
TERMINAL: frozenset[Status] = frozenset(Status(s) for s in WIRE_TERMINAL)  # a worker's run.finished says one
ACTIVE: tuple[str, ...] = tuple(s.value for s in Status if s not in TERMINAL)  # queued, running, stalled
LIVE: tuple[str, ...] = (Status.RUNNING.value, Status.STALLED.value)  # a worker may be training

Q, R, S = Status.QUEUED, Status.RUNNING, Status.STALLED
TRANSITIONS: dict[tuple[Status, Status], str] = {
    (Q, R): "scheduler: the launch is recorded, then the launcher starts the worker; "
            "or the launcher has placed a worker that waited for resources",
    (R, Q): "scheduler: the launcher could not start the worker, or its worker waits for "
            "resources (Ray: the cluster has no room yet); the run waits again",
    (Q, Status.STOPPED): "API: stopped before it started",
    (Q, Status.FAILED): "scheduler: the launcher could not start the worker",
    (R, S): "liveness: nothing from the worker for heartbeat_timeout_s",
    (S, R): "liveness: the worker is heard again",
    **{(frm, to): "the worker's run.finished, or the server's (JobManager.finalize)"
       for frm in (R, S) for to in TERMINAL},
}


class IllegalTransition(ValueError):
    pass


def check(frm: str, to: str) -> None:
    """Raises IllegalTransition unless TRANSITIONS lists frm → to."""
    if (Status(frm), Status(to)) not in TRANSITIONS:
        raise IllegalTransition(f"a run cannot go from {frm} to {to}")


@dataclass
class RunState:
    """What the server holds about one run while it lives (the store has the rest)."""

    run_id: str
    handle: Any = None  # the launcher's handle while a worker of ours runs it (opaque here)
    launching: bool = False  # its launch is recorded and its worker being started
    adopted: bool = False  # running when the server restarted: its worker may reconnect
    fresh: bool = False  # start it without the pre-forking launcher (that failed it once)
    conn: Any = None  # its worker's ingest websocket, while connected
    conn_closed: Any = None  # asyncio.Event set when that connection ends
    pending_control: list[dict[str, Any]] = field(default_factory=list)  # for a worker not connected yet
    last_seen: float | None = None  # liveness clock: last message of any kind
    stalled_since: float | None = None
    progress: float | None = None  # liveness clock: last step (or the worker's first word)
    idle_noted: bool = False  # its idleness was announced
    waiting: str | None = None  # launched, queued until the launcher places it: what it waits for

    @property
    def holds_slot(self) -> bool:
        return self.handle is not None or self.launching or self.adopted


class Lifecycle:
    """The runs' states, and `transition()`: the one writer of a run's status."""

    def __init__(self, store: Any, hub: Any, on_slot_free: Callable[[], None] = lambda: None,
                 view: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
        self.store = store
        self.hub = hub
        self.on_slot_free = on_slot_free
        self.view = view or (lambda run: {k: v for k, v in run.items() if k not in ("token", "layers")})
        self.runs: dict[str, RunState] = {}

    def state(self, run_id: str) -> RunState:
        """The run's state, made on first use."""
        st = self.runs.get(run_id)
        if st is None:
            st = self.runs[run_id] = RunState(run_id)
        return st

    def slots_used(self) -> int:
        return sum(st.holds_slot for st in self.runs.values())

    def transition(self, run_id: str, to: Status | str, reason: str | None = None,
                   **fields: Any) -> dict[str, Any] | None:
        """Move a stored run to `to`: written durably (a terminal status with its reason and end
        time, using the disk's reserve), published as a run.update, slots taken or freed.
        Returns the stored run, or None when there is none. Moving to the status it has already
        is nothing; a move TRANSITIONS does not list raises IllegalTransition. Raises
        sqlite3.Error when the store cannot write (nothing changed then)."""
        to = Status(to)
        run = self.store.get_run(run_id)
        if run is None:
            return None
        if run["status"] == to:
            return run
        check(run["status"], to)
        if to in TERMINAL:
            fields.setdefault("finished", time.time())
            fields["error"] = reason
        elif to is Status.RUNNING and run["status"] == Status.QUEUED:
            fields.setdefault("started", time.time())
        elif to is Status.QUEUED:
            fields.setdefault("started", None)
        self.store.update_run(run_id, durable=True, essential=to in TERMINAL, status=to.value, **fields)
        run = self.store.get_run(run_id)
        if to in TERMINAL:
            st = self.runs.get(run_id)
            if st is not None:
                st.adopted = False
                st.pending_control.clear()
                st.last_seen = st.stalled_since = None
                self.settle(run_id)
            self.on_slot_free()
        elif to is Status.QUEUED:
            self.on_slot_free()
        self.publish(run)
        log.debug("run %s: %s -> %s%s", run_id, run and run["status"], to, f" ({reason})" if reason else "")
        return run

    def settle(self, run_id: str) -> None:
        """Drop the run's state once nothing is left of it: it has ended (or is deleted), no
        worker of ours is running or starting, its worker's connection is closed."""
        st = self.runs.get(run_id)
        if st is None or st.handle is not None or st.launching or st.conn is not None:
            return
        run = self.store.get_run(run_id)
        if run is None or run["status"] in TERMINAL:
            del self.runs[run_id]
            self.on_slot_free()

    def publish(self, run: dict[str, Any] | None) -> None:
        if run is not None:
            self.hub.publish(run["id"], {"type": "run.update", "run_id": run["id"],
                                         "seq": run["last_seq"], "run": self.view(run)})
