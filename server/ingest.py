"""The ingest pipeline: a batch of a worker's events -> the store -> the run's summary and
state -> the live fan-out. (The websocket that brings the batches is server/routes/ingest.py;
the run's life around it is server/jobs.py and server/lifecycle.py.)

Batches all the way. Ingest sockets hand their checked batches to one writer, which stores
whatever is waiting, of every run, in one transaction (a group commit: with workers sending a
step or two per message, the commit and the run-row statements cost more than the events, and
under load more batches wait, so each pass costs less per event), one statement per table for
each batch (executemany). Each event is serialised once: that text is stored and, with the run's
id put in front, published to every browser (the hub frames it). A run's summary and record are
updated once per batch.

The event loop is never busy with ingest for long. When many workers resend their buffers at
once (a restarted server catching up), each ingest socket has a backlog of large batches ready;
taken one after another, the loop would spend seconds between two looks at anything else, and
/api/health, a page's request or a stop would wait that long. So ingest takes turns: parsing and
checking a batch holds the turn (the other sockets wait for it suspended, not ready), and the
writer stores CHUNK events a pass; between two, the loop gets a pass for everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import deque
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
        self._waiting: deque[list[Any]] = deque()  # [run id, events not stored yet, future]
        self._writer: asyncio.Task | None = None
        self._last_update: dict[str, float] = {}
        self.events = 0  # events stored since the server started

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold ingest's turn for one batch; the loop is given back after it."""
        async with self._turn:
            yield
        await asyncio.sleep(0)

    async def store(self, run_id: str, events: list[dict[str, Any]]) -> int:
        """Store a worker's (checked) batch with whatever other batches are waiting, one commit
        for them all, CHUNK events a pass of the loop; returns the run's last stored seq. Raises
        sqlite3.Error as `batch` does (chunks stored before it stay stored: ingest is idempotent
        by seq, and the worker resends from its last ack)."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append([run_id, events, done])
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_waiting())
        return await done

    async def _write_waiting(self) -> None:
        """Group commit: every pass takes up to CHUNK events of the waiting batches (of any runs),
        stores them in one transaction, and answers the batches it finished. (It does not wait for
        more to join: a socket's next batch is read only once this one is acknowledged, so a wait
        here caps each run's batches per second; tried at 15 ms, a 250-steps/s feed fell 20 s
        behind.)"""
        while self._waiting:
            take: list[tuple[str, list[dict[str, Any]]]] = []
            finished: list[asyncio.Future] = []
            room = CHUNK
            while self._waiting and room > 0:
                item = self._waiting[0]
                run_id, events, done = item
                take.append((run_id, events[:room]))
                if len(events) <= room:
                    self._waiting.popleft()
                    finished.append(done)
                else:  # a big batch: its first CHUNK events now, the rest next pass
                    item[1] = events[room:]
                room -= len(take[-1][1])
            try:
                lasts = self.batch_many(take)
            except sqlite3.Error as e:  # nothing of this pass is stored: every batch in it fails
                for run_id, _ in take:
                    for item in [x for x in self._waiting if x[0] == run_id]:
                        self._waiting.remove(item)
                        finished.append(item[2])
                for done in finished:
                    if not done.done():
                        done.set_exception(e)
            else:
                last_of = dict(zip((r for r, _ in take), lasts, strict=True))
                # The finished batches are the first ones taken (only the last one may be partial).
                for (run_id, _), done in zip(take, finished, strict=False):
                    if not done.done():
                        done.set_result(last_of[run_id])
            await asyncio.sleep(0)  # the loop gets a pass between two chunks

    def batch(self, run_id: str, events: list[dict[str, Any]], essential: bool = False) -> int:
        """Store a batch, apply its effects on the run, fan it out; returns the last stored seq.
        Raises sqlite3.Error when the store cannot write it (nothing of it is stored then).
        `essential`: the server's own end of a run, which may use the disk's reserve."""
        return self.batch_many([(run_id, events)], essential)[0]

    def batch_many(self, batches: list[tuple[str, list[dict[str, Any]]]], essential: bool = False) -> list[int]:
        """Several runs' batches: stored in one transaction, then each applied and published."""
        stored = self.jobs.store.append_many(batches, essential)
        return [self._apply(run_id, new, texts, last) for (run_id, _), (new, texts, last) in zip(batches, stored,
                                                                                                 strict=True)]

    def _apply(self, run_id: str, new: list[dict[str, Any]], texts: list[str], last: int) -> int:
        """A stored batch's effects: the run's summary and record, the live fan-out."""
        jobs = self.jobs
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
