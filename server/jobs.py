"""JobManager: the life of every run, from queued to a final status.

Each run trains in its own worker process (`python -m gradwatch.worker`, a fresh interpreter:
spawned, never forked), at most `max_concurrent` at once, the rest queued. The worker talks to
the server only over the ingest websocket; this module turns what arrives there into stored
events, run states and live messages. A worker that exits or vanishes without finishing leaves
its run `failed` with the reason, never a run that stays `running` for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import sqlite3
import time
from collections import deque
from typing import Any

from gradwatch.events import TERMINAL
from starlette.websockets import WebSocket

from .hub import Hub
from .launcher import Handle, SubprocessLauncher, ZygoteLauncher
from .liveness import Liveness
from .settings import Settings
from .store import Store, token_digest

log = logging.getLogger("gradwatch.jobs")

RUN_UPDATE_EVERY_S = 0.5  # live run.update messages per run, at most this often


def nvidia_gpus(proc: str = "/proc/driver/nvidia/gpus", dev: str = "/dev") -> list[str]:
    """Indices of the NVIDIA GPUs this process can use (none without the driver), without
    importing torch. The driver lists each GPU in `proc`; in a container the NVIDIA runtime may
    hide that folder, but gives a device node /dev/nvidia<N> for each GPU it lets in."""
    for folder, name in ((proc, None), (dev, re.compile(r"nvidia\d+"))):
        try:
            n = sum(1 for f in os.listdir(folder) if name is None or name.fullmatch(f))
        except OSError:
            n = 0
        if n:
            return [str(i) for i in range(n)]
    return []


def public(run: dict[str, Any], live_summary: dict[str, Any] | None = None) -> dict[str, Any]:
    """A run as the API shows it: no token, the newest summary."""
    out = {k: v for k, v in run.items() if k not in ("token", "layers")}
    if live_summary:
        out["summary"] = {**(run["summary"] or {}), **live_summary}
    return out


class JobManager:
    def __init__(self, settings: Settings, store: Store, hub: Hub) -> None:
        self.settings = settings
        self.store = store
        self.hub = hub
        self.queue: deque[str] = deque()
        self.procs: dict[str, Handle] = {}  # runs whose worker process we started and watch
        # Local runs that were running when the server (re)started: their workers may still be
        # alive and reconnect, so each holds a worker slot until the run ends (or is failed).
        self.adopted: set[str] = set()
        self.launching: set[str] = set()  # runs recorded `running` whose process is being started
        self.fresh: set[str] = set()  # runs to start in a fresh interpreter (the zygote failed theirs)
        # Several GPUs: each worker gets one (CUDA_VISIBLE_DEVICES), the least busy.
        self.gpus = settings.gpus if settings.gpus is not None else nvidia_gpus()
        self.gpu_of: dict[str, str] = {}  # run id -> its worker's GPU
        self.conns: dict[str, WebSocket] = {}
        self.conn_closed: dict[str, asyncio.Event] = {}
        self.summaries: dict[str, dict[str, Any]] = {}
        self.pending_control: dict[str, list[dict[str, Any]]] = {}  # for workers not connected yet
        # Runs whose end could not be stored (a full disk, past its reserve): (status, reason),
        # stored as soon as a write succeeds again, so no run stays `running` for want of room.
        self.unfinished: dict[str, tuple[str, str | None]] = {}
        # Workers training at once share the cores: more torch threads than cores only thrash.
        self.worker_threads = settings.worker_threads or max(1, (os.cpu_count() or 1) // settings.max_concurrent)
        self._last_update: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.log_dir = settings.data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.liveness = Liveness(self)  # heartbeats: silent workers become stalled, then failed
        self.launcher: SubprocessLauncher | ZygoteLauncher = (
            ZygoteLauncher(self.log_dir / "zygote.log") if settings.prefork else SubprocessLauncher())

    # ---- life of the manager ----------------------------------------------------------

    async def start(self) -> None:
        """Resume after a restart: queued runs queue again; running ones get a grace period
        for their still-living workers to reconnect, then are resolved as failed."""
        for run in reversed(self.store.list_runs(("queued",))):
            self.queue.append(run["id"])
        for run in self.store.list_runs(("running", "stalled")):
            if run["kind"] == "local":
                self.adopted.add(run["id"])
            self._spawn(self._orphan_watch(run["id"], "the server restarted and the worker did not reconnect"))
        self._spawn(self._scheduler())
        self._spawn(self.liveness.run())
        if isinstance(self.launcher, ZygoteLauncher):
            self._spawn(self._warm_launcher())

    async def _warm_launcher(self) -> None:
        """Start the zygote now, so the first run does not pay for its imports."""
        try:
            await self.launcher.ensure()
        except (OSError, TimeoutError) as e:
            log.warning("pre-forking launcher unavailable (%s); starting each worker fresh", e)
            self.launcher = SubprocessLauncher()

    async def shutdown(self) -> None:
        for run_id in list(self.procs):
            await self._send_control(run_id, {"type": "control", "stop": True})
        deadline = time.monotonic() + 5
        while self.procs and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for run_id, handle in list(self.procs.items()):
            handle.kill()
            self.finalize(run_id, "failed", "the server shut down while the run was running")
        await self.launcher.close()
        for t in list(self._tasks):
            t.cancel()

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
            "id": run_id, "name": name or run_id, "status": "queued", "config": config,
            "created": time.time(), "token": token_digest(token), "kind": kind,
            "group_id": group_id, "summary": {},
        }
        if kind == "external":  # the user's own loop: it is running as soon as it connects
            run["status"], run["started"] = "running", time.time()
        self.store.create_run(run)
        run = {**self.store.get_run(run_id), "token": token}  # the store keeps only its digest
        if kind == "local":
            self.queue.append(run_id)
            self._wake.set()
        self._publish_run(run)
        return run

    @property
    def queued_count(self) -> int:
        return len(self.queue)

    async def _scheduler(self) -> None:
        while True:
            while self.queue and len(self.procs) + len(self.adopted) < self.settings.max_concurrent:
                run_id = self.queue.popleft()
                run = self.store.get_run(run_id)
                if run is None or run["status"] != "queued":
                    continue
                try:
                    await self._launch(run)
                except (OSError, TimeoutError) as e:
                    if isinstance(self.launcher, ZygoteLauncher) and run_id not in self.fresh:
                        # This run starts in a fresh interpreter; the zygote restarts for the next.
                        log.warning("pre-forking launcher failed (%s); starting run %s fresh", e, run_id)
                        self.fresh.add(run_id)
                        self.queue.appendleft(run_id)
                    else:
                        self.fresh.discard(run_id)
                        self.finalize(run_id, "failed", f"could not start the worker: {e}")
            self._wake.clear()
            await self._wake.wait()

    async def _launch(self, run: dict[str, Any]) -> None:
        run_id = run["id"]
        argv = ["--server", self.settings.self_url, "--run", run_id,
                "--data-dir", str(self.settings.data_dir / "datasets")]
        token = secrets.token_urlsafe(24)  # the worker's own; the store keeps only its digest
        # The launch is recorded (committed, synchronous=FULL) before the process starts: a server
        # killed in between finds the run `running` when it restarts, so it waits for a worker
        # that may exist (adopts it if it connects, fails the run if none does) and never
        # launches the run a second time.
        self.store.update_run(run_id, durable=True, token=token_digest(token), status="running",
                              started=time.time())
        env = {"GRADWATCH_RUN_TOKEN": token, "GRADWATCH_TORCH_THREADS": str(self.worker_threads)}
        gpu = self._pick_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if self.settings.gpu_memory_fraction:
            env["GRADWATCH_GPU_MEMORY_FRACTION"] = str(self.settings.gpu_memory_fraction)
        self.launching.add(run_id)
        try:
            launcher = SubprocessLauncher() if run_id in self.fresh else self.launcher
            handle = await launcher.launch(argv, env, self.log_dir / f"{run_id}.log")
        except BaseException:  # no process: the run waits again (or fails, as the scheduler decides)
            self.store.update_run(run_id, durable=True, status="queued", started=None)
            raise
        finally:
            self.launching.discard(run_id)
        self.fresh.discard(run_id)
        now = self.store.get_run(run_id)
        if now is None or now["status"] != "running":  # stopped or deleted while its worker started
            handle.kill()
            self._spawn(handle.wait())  # reaped; the run keeps the status it was given
            return
        self.procs[run_id] = handle
        if gpu is not None:
            self.gpu_of[run_id] = gpu
        self._publish_run(self.store.get_run(run_id))
        self._spawn(self._monitor(run_id, handle))

    def _pick_gpu(self) -> str | None:
        """The GPU with the fewest of our workers (the first of those), when there are several."""
        if len(self.gpus) < 2:
            return None
        busy = {g: 0 for g in self.gpus}
        for g in self.gpu_of.values():
            if g in busy:
                busy[g] += 1
        return min(self.gpus, key=lambda g: busy[g])

    async def _monitor(self, run_id: str, handle: Handle) -> None:
        code = await handle.wait()
        closed = self.conn_closed.get(run_id)
        if closed is not None and run_id in self.conns:
            with contextlib.suppress(asyncio.TimeoutError):  # let its last batch land first
                await asyncio.wait_for(closed.wait(), 3.0)
        self.procs.pop(run_id, None)
        self.gpu_of.pop(run_id, None)
        self._wake.set()
        run = self.store.get_run(run_id)
        if run is not None and run["status"] not in TERMINAL:
            if code is None:
                how = "ended (exit code unknown)"
            elif code < 0:
                how = f"killed by signal {signal.Signals(-code).name}"
            else:
                how = f"exited with code {code}"
            tail = self.log_tail(run_id)
            self.finalize(run_id, "failed", f"worker {how} before finishing" + (f": {tail}" if tail else ""))

    def log_tail(self, run_id: str, lines: int = 8) -> str:
        path = self.log_dir / f"{run_id}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    async def _orphan_watch(self, run_id: str, reason: str) -> None:
        """A run with no worker process of ours: failed unless its worker (re)connects in time.
        A user's own loop (external) gets longer: a laptop that sleeps should not lose its run."""
        run = self.store.get_run(run_id)
        external = run is not None and run["kind"] == "external"
        await asyncio.sleep(self.settings.external_grace_s if external else self.settings.reattach_grace_s)
        run = self.store.get_run(run_id)
        if run is not None and run["status"] not in TERMINAL and run_id not in self.conns \
                and run_id not in self.procs:
            self.finalize(run_id, "failed", reason)

    # ---- stopping, deleting, finishing -------------------------------------------------

    async def stop(self, run_id: str) -> dict[str, Any]:
        run = self.store.get_run(run_id)
        if run is None or run["status"] in TERMINAL:
            return run
        if run["status"] == "queued":
            with contextlib.suppress(ValueError):
                self.queue.remove(run_id)
            self.finalize(run_id, "stopped", "stopped before it started")
        elif await self._send_control(run_id, {"type": "control", "stop": True}):
            self._spawn(self._kill_after(run_id, self.settings.stop_grace_s, "stopped"))
        else:  # its worker has not connected yet (or is gone): nothing trained to wait for
            self.finalize(run_id, "stopped", "stopped before training began")
            handle = self.procs.get(run_id)
            if handle is not None:
                handle.kill()
        return self.store.get_run(run_id)

    async def _kill_after(self, run_id: str, grace: float, status: str) -> None:
        """A stopped worker stops at its next step boundary. One that reaches none within
        stop_step_grace_s (a step of a huge batch, a hang) is killed then; one that does gets
        `grace` in all to send its last events. (A user's own loop is no process of ours to kill:
        it gets `grace`.)"""
        asked = time.monotonic()
        step_grace = min(self.settings.stop_step_grace_s, grace) if run_id in self.procs else grace
        reason = f"the worker did not stop within {grace:g} s and was killed"
        while time.monotonic() < asked + grace:
            run = self.store.get_run(run_id)
            if run is None or run["status"] in TERMINAL:
                return
            # Steps sent before the stop may still land after it: the grace runs from the later
            # of the stop and the last step heard.
            if time.monotonic() - max(asked, self.liveness.progress.get(run_id, 0.0)) >= step_grace:
                reason = f"the worker reached no step boundary within {step_grace:g} s of the stop and was killed"
                break
            await asyncio.sleep(0.05)
        handle = self.procs.get(run_id)
        if handle is not None:
            handle.kill()
        self.finalize(run_id, status, reason)

    async def delete(self, run_id: str) -> None:
        # The store first: on a full disk even past the reserve this raises (a 507), and the run
        # and its worker are left as they were.
        self.store.delete_run(run_id)
        handle = self.procs.get(run_id)
        if handle is not None:
            handle.kill()
        with contextlib.suppress(ValueError):
            self.queue.remove(run_id)
        ws = self.conns.get(run_id)
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close(code=1000, reason="run deleted")
        self.summaries.pop(run_id, None)
        if run_id in self.adopted:
            self.adopted.discard(run_id)
            self._wake.set()
        self.hub.publish(run_id, {"type": "run.deleted", "run_id": run_id, "seq": None})
        with contextlib.suppress(OSError):
            (self.log_dir / f"{run_id}.log").unlink()

    def finalize(self, run_id: str, status: str, reason: str | None) -> None:
        """End a run on the server's side (its worker cannot): stored as a run.finished event."""
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

    # ---- ingest: events from workers ---------------------------------------------------

    def attach(self, run_id: str, ws: WebSocket) -> None:
        self.conns[run_id] = ws
        self.conn_closed[run_id] = asyncio.Event()

    async def flush_pending_control(self, run_id: str) -> None:
        """Send what was asked of the run before its worker connected (after the hello)."""
        for message in self.pending_control.pop(run_id, []):
            await self._send_control(run_id, message)

    async def change(self, run_id: str, changes: dict[str, Any]) -> None:
        """Live change of l2/lr/grad_clip: the worker applies it before its next step and emits
        an `intervention` event. A queued run's config is changed instead."""
        run = self.store.get_run(run_id)
        # Queued, or launched (recorded `running`) with no word from its worker yet: the worker
        # takes its config from the hello, so the change goes there.
        if run["status"] == "queued" or (run["kind"] == "local" and run_id not in self.conns
                                         and run["last_seq"] == 0):
            self.store.update_run(run_id, durable=True, config={**run["config"], **changes})
            self._publish_run(self.store.get_run(run_id))
            return
        message = {"type": "control", "set": changes, "source": "api"}
        if not await self._send_control(run_id, message):
            self.pending_control.setdefault(run_id, []).append(message)

    def detach(self, run_id: str, ws: WebSocket) -> None:
        if self.conns.get(run_id) is ws:
            del self.conns[run_id]
            self.conn_closed.pop(run_id).set()
            run = self.store.get_run(run_id)
            if run is not None and run["status"] not in TERMINAL and run_id not in self.procs:
                self._spawn(self._orphan_watch(run_id, "the worker's connection was lost"))

    def ingest_batch(self, run_id: str, events: list[dict[str, Any]], essential: bool = False) -> int:
        """Store a batch, apply its effects on the run, fan it out; returns the last stored seq.
        Raises sqlite3.Error when the store cannot write it (nothing of it is stored then).
        `essential`: the server's own end of a run, which may use the disk's reserve."""
        new, last = self.store.append_events(run_id, events, essential)
        summary = self.summaries.get(run_id)
        if summary is None:  # the first batch since the server started: go on from what is stored
            stored = self.store.get_run(run_id)
            summary = self.summaries[run_id] = dict((stored or {}).get("summary") or {})
        changes: dict[str, Any] = {}
        stepped = False
        for e in new:
            kind = e["type"]
            if kind == "metrics":
                stepped = True
                summary.update(step=e.get("step"), loss=e.get("loss"), accuracy=e.get("accuracy"),
                               global_grad_norm=e.get("global_grad_norm"))
                if "val_accuracy" in e:
                    va = e["val_accuracy"]
                    summary.update(val_accuracy=va, val_loss=e.get("val_loss"))
                    best = summary.get("best_val_accuracy")
                    if isinstance(va, (int, float)) and (not isinstance(best, (int, float)) or va > best):
                        summary["best_val_accuracy"] = va
            elif kind == "alert":  # counted here too, so a live run's record says how many so far
                summary["alerts"] = (summary.get("alerts") or 0) + 1
                if summary.get("first_alert_step") is None:
                    summary["first_alert_step"] = e.get("step")
            elif kind == "run.started":
                layers = e.get("layers")
                if isinstance(layers, list) and all(isinstance(x, dict) and isinstance(x.get("name"), str)
                                                    for x in layers):
                    changes["layers"] = layers
                if isinstance(e.get("n_classes"), int):
                    summary["n_classes"] = e["n_classes"]
                summary.setdefault("alerts", 0)  # a live run's record says "0 alerts", not nothing
            elif kind == "run.finished":
                sent = e.get("summary")
                summary.update({k: v for k, v in (sent if isinstance(sent, dict) else {}).items() if k != "traceback"})
                status, reason = e.get("status"), e.get("reason")
                if status not in TERMINAL:  # a malformed end: still an end, and it says why
                    status, reason = "failed", f"the worker ended the run with an unknown status {status!r}"
                finished = e.get("time")
                changes.update(status=status, error=reason,
                               finished=finished if isinstance(finished, (int, float)) else time.time())
            e["run_id"] = run_id
            self.hub.publish(run_id, e)
        if stepped:
            self.liveness.stepped(run_id)  # before any run.update below: it no longer says idle
        if "status" in changes:
            changes["summary"] = summary
            self.store.update_run(run_id, durable=True, essential=True, **changes)  # an end: may use the reserve
            self._publish_run(self.store.get_run(run_id))
            self.summaries.pop(run_id, None)
            self.adopted.discard(run_id)  # its slot is free
            self._wake.set()
        elif new:
            if changes:
                self.store.update_run(run_id, **changes)
            now = time.monotonic()
            if now - self._last_update.get(run_id, 0.0) >= RUN_UPDATE_EVERY_S:
                self._last_update[run_id] = now
                self.store.update_run(run_id, summary=summary)
                self._publish_run(self.store.get_run(run_id))
        return last

    async def _send_control(self, run_id: str, message: dict[str, Any]) -> bool:
        ws = self.conns.get(run_id)
        if ws is None:
            return False
        try:
            await ws.send_json(message)
            return True
        except Exception:  # noqa: BLE001 - a dead socket: the monitor resolves the run
            return False

    def view(self, run: dict[str, Any]) -> dict[str, Any]:
        out = public(run, self.summaries.get(run["id"]))
        out["gpu"] = self.gpu_of.get(run["id"])
        if run["status"] == "running":
            out["idle_s"] = self.liveness.idle_s(run["id"])
        if self.store.write_error and run["status"] in ("running", "stalled") and not out.get("error"):
            out["error"] = (f"the server cannot store this run's steps ({self.store.write_error}): free space in "
                            f"{self.settings.data_dir} or delete runs; the worker keeps them until it can")
        return out

    def _publish_run(self, run: dict[str, Any] | None) -> None:
        if run is not None:
            self.hub.publish(run["id"], {"type": "run.update", "run_id": run["id"],
                                         "seq": run["last_seq"], "run": self.view(run)})
