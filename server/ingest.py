"""The ingest pipeline: a batch of a worker's events -> the store -> the run's summary and
state -> the live fan-out. (The websocket that brings the batches is server/routes/ingest.py;
the run's life around it is server/jobs.py and server/lifecycle.py.)

Batches all the way: one transaction and one statement per table for a batch
(Store.append_events_json), each event serialised once, for the store, and that same text
published to every browser (the hub frames it), and the run's summary and record updated once
per batch.

The event loop is never busy with ingest for long. When many workers resend their buffers at
once (a restarted server catching up), each ingest socket has a backlog of large batches ready;
taken one after another, the loop would spend seconds between two looks at anything else, and
/api/health, a page's request or a stop would wait that long. So ingest takes turns: one batch
at a time holds the turn (parse and check, then store and publish CHUNK events at a time),
and gives the loop back after the check, between chunks and after the batch; the others wait for the turn
suspended, not ready, so each pass of the loop does at most one chunk of ingest work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from .lifecycle import TERMINAL, IllegalTransition

if TYPE_CHECKING:
    from .jobs import JobManager

log = logging.getLogger("gradwatch.jobs")

RUN_UPDATE_EVERY_S = 0.5  # live run.update messages per run, at most this often
CHUNK = 64  # events stored per pass of the event loop (~2-4 ms for 8-layer metrics on the 2-core VM)


class Ingest:
    def __init__(self, jobs: JobManager) -> None:
        self.jobs = jobs
        self._turn = asyncio.Lock()
        self._last_update: dict[str, float] = {}
        self.events = 0  # events stored since the server started

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold ingest's turn for one batch; the loop is given back after it."""
        async with self._turn:
            yield
        await asyncio.sleep(0)

    async def store(self, run_id: str, events: list[dict[str, Any]]) -> int:
        """`batch` for a worker's batch, CHUNK events at a time, the loop given back between
        chunks (the caller holds the turn). Returns the last stored seq; raises sqlite3.Error
        as `batch` does (chunks stored before it stay stored: ingest is idempotent by seq, and
        the worker resends from its last ack)."""
        last = self.batch(run_id, events[:CHUNK])
        for i in range(CHUNK, len(events), CHUNK):
            await self.pause()
            last = self.batch(run_id, events[i:i + CHUNK])
        return last

    async def pause(self) -> None:
        """Give the loop back for a pass, the turn kept (the caller holds it)."""
        self._turn.release()
        try:
            await asyncio.sleep(0)
        finally:
            await self._turn.acquire()

    def batch(self, run_id: str, events: list[dict[str, Any]], essential: bool = False) -> int:
        """Store a batch, apply its effects on the run, fan it out; returns the last stored seq.
        Raises sqlite3.Error when the store cannot write it (nothing of it is stored then).
        `essential`: the server's own end of a run, which may use the disk's reserve."""
        jobs = self.jobs
        new, texts, last = jobs.store.append_events_json(run_id, events, essential)
        self.events += len(new)
        summary = jobs.summaries.get(run_id)
        if summary is None:  # the first batch since the server started: go on from what is stored
            stored = jobs.store.get_run(run_id)
            summary = jobs.summaries[run_id] = dict((stored or {}).get("summary") or {})
        changes: dict[str, Any] = {}
        last_metrics: dict[str, Any] | None = None
        for e in new:
            kind = e["type"]
            if kind == "metrics":
                last_metrics = e
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
        if last_metrics is not None:  # the summary says where the run is: its newest step
            e = last_metrics
            summary.update(step=e.get("step"), loss=e.get("loss"), accuracy=e.get("accuracy"),
                           global_grad_norm=e.get("global_grad_norm"))
        # Each stored text with the run's id put in front: serialised once, for the store and
        # for every browser.
        head = '{"run_id":' + orjson.dumps(run_id).decode() + ","
        jobs.hub.publish_json(run_id, [head + t[1:] for t in texts])
        if last_metrics is not None:
            jobs.liveness.stepped(run_id)  # before any run.update below: it no longer says idle
        if "status" in changes:
            status, reason = changes.pop("status"), changes.pop("error")
            try:  # written durably (may use the disk's reserve), published, its slot freed
                jobs.lifecycle.transition(run_id, status, reason, summary=summary, **changes)
            except IllegalTransition as err:  # an end after another end (two enders raced): the first holds
                log.warning("run %s: %s; this end is not applied", run_id, err)
            jobs.summaries.pop(run_id, None)
            self._last_update.pop(run_id, None)
        elif new:
            if changes:
                jobs.store.update_run(run_id, **changes)
            now = time.monotonic()
            if now - self._last_update.get(run_id, 0.0) >= RUN_UPDATE_EVERY_S:
                self._last_update[run_id] = now
                jobs.store.update_run(run_id, summary=summary)
                jobs.lifecycle.publish(jobs.store.get_run(run_id))
        return last
