"""JobManager: runs from queued to a final status, through a swappable launcher.

At most `max_concurrent` workers at once, the rest queued. Which process or actor trains a run
is the launcher's business (server/launcher.py: local processes; a handle, nothing else, comes
back); the worker talks to the server only over the ingest websocket, and this module turns
what arrives there into stored events, run states and live messages. A run's status changes
only through `Lifecycle.transition()` (server/lifecycle.py, which has the table of who moves a
run where). A worker that exits or vanishes without finishing leaves its run `failed` with the
reason, never a run that stays `running` for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import sqlite3
import time
from collections import deque
from typing import Any

from starlette.websockets import WebSocket

from .hub import Hub
from .ingest import Ingest
from .launcher import Launcher, LaunchSpec, RunHandle, make_launcher
from .lifecycle import LIVE, TERMINAL, Lifecycle, Status
from .liveness import Liveness
from .settings import Settings
from .store import Store, token_digest

log = logging.getLogger("gradwatch.jobs")

PLACEMENT_NOTE_S = 10.0  # a worker not placed this long, for want of resources, shows `queued` saying so


def public(run: dict[str, Any], live_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run as the API shows it: no token, the newest summary."""
    out = {k: v for k, v in run.items() if k not in ("token", "layers", "placement")}
    if live_summary:
        out["summary"] = {**(run["summary"] or {}), **live_summary}
    return out


class JobManager:
    def __init__(self, settings: Settings, store: Store, hub: Hub, launcher: Launcher | None = None) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.launcher: Launcher = launcher if launcher is not None else make_launcher(settings)
        self.queue: deque[str] = deque()
        self._wake = asyncio.Event()
        self.lifecycle = Lifecycle(store, hub, on_slot_free=self._wake.set, view=self.view)
        self.runs = self.lifecycle.runs  # run id -> RunState: everything held about a live run
        self.summaries: dict[str, dict[str, Any]] = {}
        # Runs whose end could not be stored (a full disk, past its reserve): (status, reason),
        # stored as soon as a write succeeds again, so no run stays `running` for want of room.
        self.unfinished: dict[str, tuple[str, str | None]] = {}
        self.ingest = Ingest(self)  # store -> summary -> publish, for every worker's batches
        self._tasks: set[asyncio.Task] = set()
        # heartbeats: silent workers become stalled, then failed
        self.liveness = Liveness(settings, self.lifecycle, on_hung=self.fail_hung)

    # ---- life of the manager ----------------------------------------------------------

    async def start(self) -> None:
        """Resume after a restart: queued runs queue again; running ones are re-attached when
        the launcher still reaches their worker, else get a grace period for a still-living
        worker to reconnect (it is adopted then), and are failed when none does."""
        await self.launcher.start()
        for run in reversed(self.store.list_runs((Status.QUEUED.value,))):
            try:  # a run waiting for the cluster's resources has a worker already (Ray)
                handle = await self.launcher.reattach(run["id"])
            except LookupError:
                handle = None
            if handle is not None:
                self._watch(handle)
                self._spawn(self._placement(handle))
            else:
                self.queue.append(run["id"])
        for run in self.store.list_runs(LIVE):
            try:
                handle = await self.launcher.reattach(run["id"]) if run["kind"] == "local" else None
            except LookupError as e:  # the launcher knows the worker is gone: no grace to wait out
                self.finalize(run["id"], "failed", f"the server restarted and {e}")
                continue
            if handle is not None:
                self._watch(handle)
                self._spawn(self._placement(handle))
                continue
            if run["kind"] == "local":
                self.lifecycle.state(run["id"]).adopted = True
            self._spawn(self._orphan_watch(run["id"], "the server restarted and the worker did not reconnect"))
        self._spawn(self._scheduler())
        self._spawn(self.liveness.run())

    async def shutdown(self) -> None:
        for run_id in self._ours():
            await self._send_control(run_id, {"type": "control", "stop": True})
        deadline = time.monotonic() + 5
        while self._ours() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run_id in self._ours():
            self.launcher.kill(self.runs[run_id].handle)
            self.finalize(run_id, "failed", "the server shut down while the run was running")
        await self.launcher.close()
        for t in list(self._tasks):
            t.cancel()

    def _ours(self) -> list[str]:
        """Runs whose worker we launched and watch."""
        return [run_id for run_id, st in self.runs.items() if st.handle is not None]

    def _spawn(self, coro: Any) -> asyncio.Task:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---- creating and scheduling runs --------------------------------------------------

    def create(self, name: str | None, config: dict[str, Any], kind: str = "local",
               group_id: str | None = None) -> dict[str, Any]:
        run_id = secrets.token_hex(4)
        while self.store.get_run(run_id) is not None:
            run_id = secrets.token_hex(4)
        token = secrets.token_urlsafe(24)  # an external run's; a local run's worker gets its own at launch
        run = {
            "id": run_id, "name": name or run_id, "status": Status.QUEUED.value, "config": config,
            "created": time.time(), "token": token_digest(token), "kind": kind,
            "group_id": group_id, "summary": {},
        }
        if kind == "external":  # the user's own loop: it is running as soon as it connects
            run["status"], run["started"] = Status.RUNNING.value, time.time()
        self.store.create_run(run)
        run = {**self.store.get_run(run_id), "token": token}  # the store keeps only its digest
        if kind == "local":
            self.queue.append(run_id)
            self._wake.set()
        self.lifecycle.publish(run)
        return run

    @property
    def queued_count(self) -> int:
        return len(self.queue)

    @property
    def active_count(self) -> int:
        """Runs holding a worker slot or a worker connection."""
        return sum(st.holds_slot or st.conn is not None for st in self.runs.values())

    def connected(self, run_id: str) -> bool:
        st = self.runs.get(run_id)
        return st is not None and st.conn is not None

    async def _scheduler(self) -> None:
        while True:
            while self.queue and self.lifecycle.slots_used() < self.launcher.max_concurrent:
                run_id = self.queue.popleft()
                run = self.store.get_run(run_id)
                if run is None or run["status"] != Status.QUEUED:
                    continue
                try:
                    await self._launch(run)
                except (OSError, TimeoutError) as e:
                    self.finalize(run_id, "failed", f"could not start the worker: {e}")
            self._wake.clear()
            await self._wake.wait()

    async def _launch(self, run: dict[str, Any]) -> None:
        run_id = run["id"]
        token = secrets.token_urlsafe(24)  # the worker's own; the store keeps only its digest
        # The launch is recorded (committed, synchronous=FULL) before the worker starts: a server
        # killed in between finds the run `running` when it restarts, so it waits for a worker
        # that may exist (adopts it if it connects, fails the run if none does) and never
        # launches the run a second time.
        st = self.lifecycle.state(run_id)
        st.launching = True
        try:
            self.lifecycle.transition(run_id, Status.RUNNING, token=token_digest(token))
            handle = await self.launcher.launch(LaunchSpec(run_id, token, run["config"]))
        except BaseException:  # no worker: the run waits again (or fails, as the scheduler decides)
            st.launching = False
            self.lifecycle.transition(run_id, Status.QUEUED)
            raise
        st.launching = False
        now = self.store.get_run(run_id)
        if now is None or now["status"] != Status.RUNNING:  # stopped or deleted while its worker started
            self.launcher.kill(handle)
            self._spawn(self.launcher.wait(handle))  # reaped; the run keeps the status it was given
            self.lifecycle.settle(run_id)
            return
        self._watch(handle)
        if await self.launcher.placed(handle, 0):
            self._placed(run_id)  # its record now says where it runs
        else:
            self._spawn(self._placement(handle))  # the scheduler goes on meanwhile

    async def _placement(self, handle: RunHandle) -> None:
        """Until the launcher has placed the worker, it is watched here. One not placed within
        PLACEMENT_NOTE_S, whose launcher says it waits for resources (Ray: the cluster has no
        room), makes its run `queued`, its record saying what it waits for; once placed the run
        is `running`, its record saying where."""
        run_id = handle.run_id
        noted_after = time.monotonic() + PLACEMENT_NOTE_S
        while not await self.launcher.placed(handle, 1.0):
            st = self.runs.get(run_id)
            run = self.store.get_run(run_id)
            if st is None or st.handle is not handle or run is None or run["status"] in TERMINAL:
                return  # ended: killed, stopped or deleted
            if time.monotonic() < noted_after:
                continue
            why = await self.launcher.waiting(handle, run["config"])  # None: starting, not waiting
            if why is not None and why != st.waiting:
                st.waiting = why
                log.info("run %s: %s", run_id, why)
                if run["status"] == Status.QUEUED:
                    self.lifecycle.publish(run)
                else:
                    self.lifecycle.transition(run_id, Status.QUEUED)
        self._placed(run_id)

    def _placed(self, run_id: str) -> None:
        st = self.runs.get(run_id)
        if st is not None:
            st.waiting = None
            where = st.handle.where if st.handle is not None else {}
            placement = {"node": where.get("node"), "gpu": where.get("gpu")}
            if any(placement.values()):  # kept: the record says where it ran after it ended too
                self.store.update_run(run_id, placement=placement)
        run = self.store.get_run(run_id)
        if run is not None and run["status"] == Status.QUEUED and st is not None and st.handle is not None:
            self.lifecycle.transition(run_id, Status.RUNNING)
        elif run is not None:
            self.lifecycle.publish(run)

    def _watch(self, handle: RunHandle) -> None:
        self.lifecycle.state(handle.run_id).handle = handle
        self._spawn(self._monitor(handle))

    async def _monitor(self, handle: RunHandle) -> None:
        run_id = handle.run_id
        ended = await self.launcher.wait(handle)
        st = self.runs.get(run_id)
        if st is not None and st.conn is not None:
            with contextlib.suppress(asyncio.TimeoutError):  # let its last batch land first
                await asyncio.wait_for(st.conn_closed.wait(), 3.0)
        run = self.store.get_run(run_id)
        if run is not None and run["status"] not in TERMINAL:
            self.finalize(run_id, "failed", self.launcher.failure_reason(handle, ended))
        st = self.runs.get(run_id)
        if st is not None:
            st.handle = None
            self.lifecycle.settle(run_id)
        self._wake.set()

    async def _orphan_watch(self, run_id: str, reason: str) -> None:
        """A run with no worker process of ours: failed unless its worker (re)connects in time.
        A user's own loop (external) gets longer: a laptop that sleeps should not lose its run."""
        run = self.store.get_run(run_id)
        external = run is not None and run["kind"] == "external"
        await asyncio.sleep(self.settings.external_grace_s if external else self.settings.reattach_grace_s)
        run = self.store.get_run(run_id)
        st = self.runs.get(run_id)
        no_worker = st is None or (st.conn is None and st.handle is None)
        if run is not None and run["status"] not in TERMINAL and no_worker:
            self.finalize(run_id, "failed", reason)

    # ---- stopping, deleting, finishing -------------------------------------------------

    async def stop(self, run_id: str) -> dict[str, Any]:
        run = self.store.get_run(run_id)
        if run is None or run["status"] in TERMINAL:
            return run
        if run["status"] == Status.QUEUED:
            with contextlib.suppress(ValueError):
                self.queue.remove(run_id)
            self.finalize(run_id, "stopped", "stopped before it started")
            self._kill(run_id)  # launched, waiting for the cluster's resources
        elif await self._send_control(run_id, {"type": "control", "stop": True}):
            self._spawn(self._kill_after(run_id, self.settings.stop_grace_s, "stopped"))
        else:  # its worker has not connected yet (or is gone): nothing trained to wait for
            self.finalize(run_id, "stopped", "stopped before training began")
            self._kill(run_id)
        return self.store.get_run(run_id)

    def _kill(self, run_id: str) -> bool:
        """Kill the run's worker if it is one we launched; says whether it was."""
        st = self.runs.get(run_id)
        if st is None or st.handle is None:
            return False
        self.launcher.kill(st.handle)
        return True

    async def _kill_after(self, run_id: str, grace: float, status: str) -> None:
        """A stopped worker stops at its next step boundary. One that reaches none within
        stop_step_grace_s (a step of a huge batch, a hang) is killed then; one that does gets
        `grace` in all to send its last events. (A user's own loop is no process of ours to kill:
        it gets `grace`.)"""
        asked = time.monotonic()
        st = self.runs.get(run_id)
        ours = st is not None and st.handle is not None
        step_grace = min(self.settings.stop_step_grace_s, grace) if ours else grace
        reason = f"the worker did not stop within {grace:g} s and was killed"
        while time.monotonic() < asked + grace:
            run = self.store.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                return
            # Steps sent before the stop may still land after it: the grace runs from the later
            # of the stop and the last step heard.
            st = self.runs.get(run_id)
            if time.monotonic() - max(asked, (st and st.progress) or 0.0) >= step_grace:
                reason = f"the worker reached no step boundary within {step_grace:g} s of the stop and was killed"
                break
            await asyncio.sleep(0.05)
        self._kill(run_id)
        self.finalize(run_id, status, reason)

    async def delete(self, run_id: str) -> None:
        # The store first: on a full disk even past the reserve this raises (a 507), and the run
        # and its worker are left as they were.
        self.store.delete_run(run_id)
        self._kill(run_id)
        with contextlib.suppress(ValueError):
            self.queue.remove(run_id)
        st = self.runs.get(run_id)
        if st is not None and st.conn is not None:
            with contextlib.suppress(Exception):
                await st.conn.close(code=1000, reason="run deleted")
        self.summaries.pop(run_id, None)
        st = self.runs.get(run_id)
        if st is not None:
            st.adopted = False
            self.lifecycle.settle(run_id)  # else its monitor or detach does, when the worker is gone
        self.hub.publish(run_id, {"type": "run.deleted", "run_id": run_id, "seq": None})
        self.launcher.forget(run_id)

    def finalize(self, run_id: str, status: str, reason: str | None) -> None:
        """End a run on the server's side (its worker cannot): stored as a run.finished event,
        which ingest applies through the lifecycle's transition."""
        run = self.store.get_run(run_id)
        if run is None or run["status"] in TERMINAL:
            return
        summary = {**run["summary"], **self.summaries.get(run_id, {})}
        event = {"type": "run.finished", "seq": run["last_seq"] + 1, "time": time.time(),
                 "status": status, "reason": reason, "summary": summary, "source": "server"}
        try:
            self.ingest_batch(run_id, [event], essential=True)
        except sqlite3.Error as e:
            log.error("run %s: could not store its end (%s: %s), trying again each second", run_id, status, e)
            if not self.unfinished:
                self._spawn(self._finish_later())
            self.unfinished[run_id] = (status, reason)
            return
        self.unfinished.pop(run_id, None)

    async def _finish_later(self) -> None:
        while self.unfinished:
            await asyncio.sleep(1.0)
            for run_id, (status, reason) in list(self.unfinished.items()):
                with contextlib.suppress(sqlite3.Error):
                    self.finalize(run_id, status, reason)

    def fail_hung(self, run_id: str, reason: str) -> None:
        """Liveness found the run's worker hung: kill it first, then store run.finished (a killed
        worker cannot send an event whose seq would collide with the server's; no await in
        between), then close its connection."""
        if self._kill(run_id):
            reason += "; the worker was killed"
        st = self.runs.get(run_id)
        ws = st.conn if st is not None else None
        self.finalize(run_id, "failed", reason)
        if ws is not None:
            self._spawn(_close(ws, "run failed: no heartbeat"))

    # ---- ingest: events from workers ---------------------------------------------------

    def attach(self, run_id: str, ws: WebSocket) -> None:
        st = self.lifecycle.state(run_id)
        st.conn, st.conn_closed = ws, asyncio.Event()
        if st.handle is not None and st.waiting is not None:  # its worker started before we saw it placed
            self._placed(run_id)

    async def flush_pending_control(self, run_id: str) -> None:
        """Send what was asked of the run before its worker connected (after the hello)."""
        st = self.runs.get(run_id)
        if st is None:
            return
        pending, st.pending_control = st.pending_control, []
        for message in pending:
            await self._send_control(run_id, message)

    async def change(self, run_id: str, changes: dict[str, Any]) -> None:
        """Live change of l2/lr/grad_clip: the worker applies it before its next step and emits
        an `intervention` event. A queued run's config is changed instead."""
        run = self.store.get_run(run_id)
        # Queued, or launched (recorded `running`) with no word from its worker yet: the worker
        # takes its config from the hello, so the change goes there.
        if run["status"] == Status.QUEUED or (run["kind"] == "local" and not self.connected(run_id)
                                              and run["last_seq"] == 0):
            self.store.update_run(run_id, durable=True, config={**run["config"], **changes})
            self.lifecycle.publish(self.store.get_run(run_id))
            return
        message = {"type": "control", "set": changes, "source": "api"}
        if not await self._send_control(run_id, message):
            self.lifecycle.state(run_id).pending_control.append(message)

    def detach(self, run_id: str, ws: WebSocket) -> None:
        st = self.runs.get(run_id)
        if st is not None and st.conn is ws:
            st.conn = None
            st.conn_closed.set()
            run = self.store.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                self.lifecycle.settle(run_id)
            elif st.handle is None:
                self._spawn(self._orphan_watch(run_id, "the worker's connection was lost"))

    def ingest_batch(self, run_id: str, events: list[dict[str, Any]], essential: bool = False) -> int:
        """Store a batch, apply its effects on the run, fan it out (server/ingest.py)."""
        return self.ingest.batch(run_id, events, essential)

    async def _send_control(self, run_id: str, message: dict[str, Any]) -> bool:
        st = self.runs.get(run_id)
        if st is None or st.conn is None:
            return False
        try:
            await st.conn.send_json(message)
            return True
        except Exception:  # noqa: BLE001 - a dead socket: the monitor resolves the run
            return False

    def view(self, run: dict[str, Any]) -> dict[str, Any]:
        out = public(run, self.summaries.get(run["id"]))
        st = self.runs.get(run["id"])
        where = st.handle.where if st is not None and st.handle is not None else (run.get("placement") or {})
        out["gpu"], out["node"] = where.get("gpu"), where.get("node")
        if st is not None and st.waiting and run["status"] == Status.QUEUED:
            out["waiting"] = st.waiting
        if run["status"] == Status.RUNNING:
            out["idle_s"] = self.liveness.idle_s(run["id"])
        if self.store.write_error and run["status"] in LIVE and not out.get("error"):
            out["error"] = (f"the server cannot store this run's steps ({self.store.write_error}): free space in "
                            f"{self.settings.data_dir} or delete runs; the worker keeps them until it can")
        return out


async def _close(ws: WebSocket, reason: str) -> None:
    with contextlib.suppress(Exception):
        await ws.close(code=1008, reason=reason)
