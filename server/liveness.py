"""Heartbeat watchdog: a run whose worker went silent is `stalled`, then `failed`.

A connected worker sends something at least every second (events, or a heartbeat from its
sender thread when it has none). A run silent for `heartbeat_timeout_s` is marked `stalled`
(the process is stopped, hung, swapping, or its network is cut); anything arriving from it
again makes it `running`. Stalled for `stalled_timeout_s` more while still connected, or while
its worker is a process of ours, it is `failed` with the reason and that worker is killed, so
that it cannot wake later and write to a run that has ended. A disconnected run of someone
else's process (gradwatch.connect, a worker reattached after a restart) is left to the reconnect
grace in jobs.py.

A process that dies outright is not this module's business: its exit (our workers) or its
closed connection (reattached and external ones) resolves the run within moments.

Heartbeats prove the process and its connection, not its training loop: one stuck in a data
loader, a deadlock or a debugger beats on. So the watchdog also keeps the time of each run's
last step received (or of its worker's first word): a running run without a step for
`idle_note_s` gets a run.update whose record says so (`idle_s`), and the dashboard shows "no
step for …" until the next step comes. It is a note, not a verdict: some steps are slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from gradwatch.events import TERMINAL

if TYPE_CHECKING:
    from .jobs import JobManager

log = logging.getLogger("gradwatch.liveness")


class Liveness:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self.timeout = jobs.settings.heartbeat_timeout_s
        self.stalled_timeout = jobs.settings.stalled_timeout_s
        self.last_seen: dict[str, float] = {}  # run id -> monotonic time of its last message
        self.stalled_since: dict[str, float] = {}
        self.idle_note = jobs.settings.idle_note_s
        self.progress: dict[str, float] = {}  # run id -> monotonic time of its last step (or first word)
        self.idle_noted: set[str] = set()  # runs whose idleness was announced

    def seen(self, run_id: str) -> None:
        """Anything arrived from the run's worker (a batch, a heartbeat, a new connection)."""
        self.last_seen[run_id] = time.monotonic()
        self.progress.setdefault(run_id, self.last_seen[run_id])
        if self.stalled_since.pop(run_id, None) is not None:
            run = self.jobs.store.get_run(run_id)
            if run is not None and run["status"] == "stalled":
                self._set_status(run_id, "running")
                log.info("run %s: its worker is heard again", run_id)

    def stepped(self, run_id: str) -> None:
        """A step of the run arrived (the next run.update, due now, no longer says idle)."""
        self.progress[run_id] = time.monotonic()
        self.idle_noted.discard(run_id)

    def idle_s(self, run_id: str) -> float | None:
        """Seconds since the run's last step, once that is idle_note_s or more; else None."""
        since = self.progress.get(run_id)
        idle = None if since is None else time.monotonic() - since
        return round(idle, 1) if idle is not None and idle >= self.idle_note else None

    def forget(self, run_id: str) -> None:
        self.last_seen.pop(run_id, None)
        self.stalled_since.pop(run_id, None)
        self.progress.pop(run_id, None)
        self.idle_noted.discard(run_id)

    async def run(self) -> None:
        tick = min(self.timeout, self.stalled_timeout) / 4
        while True:
            await asyncio.sleep(min(tick, 1.0))
            try:
                self.check(time.monotonic())
            except Exception:  # noqa: BLE001 - the watchdog must outlive one bad check
                log.exception("liveness check failed")

    def check(self, now: float) -> None:
        for run_id, seen in list(self.last_seen.items()):
            run = self.jobs.store.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                self.forget(run_id)
                continue
            silent = now - seen
            if (run["status"] == "running" and run_id not in self.idle_noted
                    and now - self.progress.get(run_id, now) >= self.idle_note):
                self.idle_noted.add(run_id)
                self.jobs._publish_run(run)  # its record now carries idle_s
            if run_id not in self.stalled_since:
                if silent > self.timeout:
                    self.stalled_since[run_id] = now
                    self._set_status(run_id, "stalled")
                    log.warning("run %s: nothing from its worker for %.1f s: stalled", run_id, silent)
            elif now - self.stalled_since[run_id] > self.stalled_timeout and (
                    run_id in self.jobs.conns or run_id in self.jobs.procs):
                # Connected but silent, or our own process: hung. A user's loop (or a reattached
                # worker) that has disconnected is the reconnect grace's business instead: a
                # laptop that sleeps keeps its run for GRADWATCH_EXTERNAL_GRACE_S.
                self._fail(run_id, silent)

    def _fail(self, run_id: str, silent: float) -> None:
        # Kill first, then store run.finished: a killed worker cannot send an event whose seq
        # would collide with the server's. No await in between.
        handle = self.jobs.procs.get(run_id)
        killed = ""
        if handle is not None:
            with contextlib.suppress(ProcessLookupError):
                handle.kill()
            killed = "; the worker was killed"
        self.forget(run_id)
        self.jobs.finalize(run_id, "failed", f"no heartbeat from the worker for {silent:.0f} s "
                                             f"(stopped, hung or cut off){killed}")
        ws = self.jobs.conns.get(run_id)
        if ws is not None:
            self.jobs._spawn(_close(ws))

    def _set_status(self, run_id: str, status: str) -> None:
        self.jobs.store.update_run(run_id, durable=True, status=status)
        self.jobs._publish_run(self.jobs.store.get_run(run_id))


async def _close(ws: object) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=1008, reason="run failed: no heartbeat")  # type: ignore[attr-defined]
