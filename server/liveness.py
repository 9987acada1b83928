"""Heartbeat watchdog: a run whose worker went silent is `stalled`, then `failed`.

A connected worker sends something at least every second (events, or a heartbeat from its
sender thread when it has none). A run silent for `heartbeat_timeout_s` is marked `stalled`
(the process is stopped, hung, swapping, or its network is cut); anything arriving from it
again makes it `running`. Stalled for `stalled_timeout_s` more while still connected, or while
its worker is a process of ours, it is `failed` with the reason and that worker is killed, so
that it cannot wake later and write to a run that has ended. A disconnected run of someone
else's process (gradwatch.connect, a worker reattached after a restart) is left to the reconnect
grace in jobs.py.

It talks to the rest through a narrow interface: the run states and `transition()` of
server/lifecycle.py, and one callback, `on_hung(run_id, reason)`, by which the job manager ends
a hung run (kills its worker, stores the end, closes its connection). Its clock is injected
(`clock`, monotonic seconds), so tests drive it with a fake one.

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
import logging
import time
from collections.abc import Callable
from typing import Any

from .lifecycle import TERMINAL, Lifecycle, Status

log = logging.getLogger("gradwatch.liveness")


class Liveness:
    def __init__(self, settings: Any, lifecycle: Lifecycle, on_hung: Callable[[str, str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifecycle = lifecycle
        self.on_hung = on_hung
        self.clock = clock
        self.timeout = settings.heartbeat_timeout_s
        self.stalled_timeout = settings.stalled_timeout_s
        self.idle_note = settings.idle_note_s

    def seen(self, run_id: str) -> None:
        """Anything arrived from the run's worker (a batch, a heartbeat, a new connection)."""
        st = self.lifecycle.state(run_id)
        st.last_seen = self.clock()
        if st.progress is None:
            st.progress = st.last_seen
        if st.stalled_since is not None:
            st.stalled_since = None
            run = self.lifecycle.store.get_run(run_id)
            if run is not None and run["status"] == Status.STALLED:
                self.lifecycle.transition(run_id, Status.RUNNING)
                log.info("run %s: its worker is heard again", run_id)

    def stepped(self, run_id: str) -> None:
        """A step of the run arrived (the next run.update, due now, no longer says idle)."""
        st = self.lifecycle.state(run_id)
        st.progress = self.clock()
        st.idle_noted = False

    def idle_s(self, run_id: str) -> float | None:
        """Seconds since the run's last step, once that is idle_note_s or more; else None."""
        st = self.lifecycle.runs.get(run_id)
        idle = None if st is None or st.progress is None else self.clock() - st.progress
        return round(idle, 1) if idle is not None and idle >= self.idle_note else None

    async def run(self) -> None:
        tick = min(self.timeout, self.stalled_timeout) / 4
        while True:
            await asyncio.sleep(min(tick, 1.0))
            try:
                self.check(self.clock())
            except Exception:  # noqa: BLE001 - the watchdog must outlive one bad check
                log.exception("liveness check failed")

    def check(self, now: float) -> None:
        for run_id, st in list(self.lifecycle.runs.items()):
            if st.last_seen is None:
                continue  # not heard from yet: the launcher's exit or the reconnect grace decides
            run = self.lifecycle.store.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                st.last_seen = st.stalled_since = None
                continue
            silent = now - st.last_seen
            if (run["status"] == Status.RUNNING and not st.idle_noted
                    and now - (st.progress if st.progress is not None else now) >= self.idle_note):
                st.idle_noted = True
                self.lifecycle.publish(run)  # its record now carries idle_s
            if st.stalled_since is None:
                if silent > self.timeout:
                    st.stalled_since = now
                    self.lifecycle.transition(run_id, Status.STALLED)
                    log.warning("run %s: nothing from its worker for %.1f s: stalled", run_id, silent)
            elif now - st.stalled_since > self.stalled_timeout and (st.conn is not None or st.handle is not None):
                # Connected but silent, or our own worker: hung. A user's loop (or a reattached
                # worker) that has disconnected is the reconnect grace's business instead: a
                # laptop that sleeps keeps its run for GRADWATCH_EXTERNAL_GRACE_S.
                st.last_seen = st.stalled_since = None
                self.on_hung(run_id, f"no heartbeat from the worker for {silent:.0f} s (stopped, hung or cut off)")
