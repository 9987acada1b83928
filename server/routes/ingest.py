"""WS /api/ingest/{run_id}: the one protocol every worker speaks.

server → worker, on connect: {"type": "hello", "run_id", "acked_seq", "config"}, and for a built-in
                 run "checkpoints" (its folder), for a fork "resume" and "changes" (server/forks.py)
worker → server: {"type": "batch", "events": [{"type", "seq", ...}, ...]}
                 {"type": "heartbeat"} when it has nothing to send for a second (not stored, not acked)
server → worker: {"type": "ack", "seq": last stored seq}, and {"type": "control", ...}

Acks are coalesced: at most one per ACK_S per connection, carrying the last stored seq (a
batch stored after a quiet spell is acked at once; one stored sooner after the previous ack
waits for the rest of the interval, with whatever follows it). A worker keeps what is not acked
and resends it after a reconnect (the store skips what it has), so an ack only trims its
buffer and ends its final wait: one write and one wake-up of the worker per step bought nothing
(the ack writes were ~15% of the server's time with four workers at full speed).

The run's own token is checked before accept(); a wrong one is closed with 1008. A token acts for
its run only, and only as a worker: every event is checked against its type's schema first
(server/wire.py), and the run has limits on what it may store (GRADWATCH_RUN_MAX_EVENTS,
GRADWATCH_RUN_MAX_BYTES). A message that breaks either is refused whole: the worker is asked to
stop, the run ends `failed` with the reason (its run.finished event says it, in every open
dashboard), the reason is logged, and the socket is closed — 1003 for a message that is not a
batch, 1008 for an event a worker may not send, 1009 for a message over 4 MiB, 1008 at a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status
from gradwatch.events import TERMINAL

from .. import forks, wire
from ..middleware import query_token
from ..security import bearer
from ..store import disk_full, token_ok

router = APIRouter(prefix="/api", tags=["ingest"])
log = logging.getLogger("gradwatch.ingest")

MAX_INGEST_MESSAGE = 4 * 1024 * 1024  # one batch; the worker sends at most 512 events per message
MAX_EVENTS_PER_BATCH = 2048
ACK_S = 0.05  # at most one ack per this, per connection


class Acks:
    """The acks of one ingest connection, coalesced to at most one per ACK_S."""

    def __init__(self, ws: WebSocket, seq: int) -> None:
        self.ws = ws
        self.stored = seq
        self.owed = False  # a batch was stored (or found stored already) since the last ack
        self.last = 0.0  # monotonic time of the last ack sent
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task | None = None

    async def stored_up_to(self, seq: int) -> None:
        self.stored, self.owed = max(self.stored, seq), True
        if self.timer is not None or (self.task is not None and not self.task.done()):
            return  # an ack is due already; it will carry this seq
        wait = self.last + ACK_S - time.monotonic()
        if wait <= 0:
            await self.send()
        else:
            self.timer = asyncio.get_running_loop().call_later(wait, self._due)

    def _due(self) -> None:
        self.timer = None
        self.task = asyncio.ensure_future(self.send())

    async def send(self) -> None:
        self.last = time.monotonic()
        if self.owed:
            self.owed = False
            with contextlib.suppress(Exception):  # the connection went meanwhile: the worker resends
                await self.ws.send_json({"type": "ack", "seq": self.stored})
        if self.owed and self.timer is None:  # a batch was stored while this ack was being written
            wait = max(0.0, self.last + ACK_S - time.monotonic())
            self.timer = asyncio.get_running_loop().call_later(wait, self._due)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.task.cancel()


@router.websocket("/ingest/{run_id}")
async def ingest(ws: WebSocket, run_id: str) -> None:
    jobs = ws.app.state.jobs
    run = jobs.store.get_run(run_id)
    given = bearer(ws.headers) or query_token(ws.scope.get("query_string", b"").decode("latin-1"))
    if run is None or not token_ok(given, run["token"]):
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="unknown run or wrong token")
        return
    await ws.accept()
    if run["status"] in TERMINAL:
        await ws.send_json({"type": "error", "message": f"run {run_id} is already {run['status']}"})
        await ws.close(code=status.WS_1008_POLICY_VIOLATION)
        return
    if jobs.connected(run_id):  # one worker per run: a second one's events would interleave with the first's
        log.warning("run %s: refused a second worker connection while one is connected", run_id)
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="another worker is connected to this run")
        return
    jobs.attach(run_id, ws)
    jobs.liveness.seen(run_id)
    checker = wire.Checker(run_id, run["layers"], run["last_seq"])
    acks = Acks(ws, run["last_seq"])
    try:
        await ws.send_json({"type": "hello", "run_id": run_id, "acked_seq": run["last_seq"],
                            "config": run["config"], **forks.hello(ws.app.state.settings, run,
                                                                  getattr(jobs.launcher, "name", "local"))})
        await jobs.flush_pending_control(run_id)
        while True:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                break
            data = raw.get("bytes") or (raw.get("text") or "").encode()
            if len(data) > MAX_INGEST_MESSAGE:
                await refuse(ws, run_id, status.WS_1009_MESSAGE_TOO_BIG,
                             f"a message of {len(data)} bytes, over {MAX_INGEST_MESSAGE}")
                break
            jobs.liveness.seen(run_id)
            if wire.is_heartbeat(data):
                continue
            async with jobs.ingest.turn():  # parsed and checked one batch at a time (server/ingest.py)
                events = await check(ws, run_id, checker, data)
            if events is None or not await store(ws, run_id, checker, events, acks):
                break
    except WebSocketDisconnect:
        pass
    finally:
        acks.close()
        jobs.detach(run_id, ws)
        with contextlib.suppress(Exception):
            await ws.close()


async def check(ws: WebSocket, run_id: str, checker: wire.Checker, data: bytes) -> list[dict] | None:
    """One message's events, checked; None when the connection ends over them."""
    try:
        events = wire.parse_batch(data)
    except wire.BadEvent as e:
        await refuse(ws, run_id, status.WS_1003_UNSUPPORTED_DATA, f"not a batch of events: {e}")
        return None
    try:
        if len(events) > MAX_EVENTS_PER_BATCH:
            raise wire.BadEvent(f"{len(events)} events in one batch, over {MAX_EVENTS_PER_BATCH}")
        checker.check(events)
    except wire.BadEvent as e:
        await refuse(ws, run_id, status.WS_1008_POLICY_VIOLATION, f"an event a worker may not send: {e}")
        return None
    over = over_limit(ws, run_id, events, len(data), checker.last_seq)
    if over:
        await refuse(ws, run_id, status.WS_1008_POLICY_VIOLATION, over)
        return None
    return events


async def store(ws: WebSocket, run_id: str, checker: wire.Checker, events: list[dict], acks: Acks) -> bool:
    """Store and acknowledge a checked batch; False when the connection ends over it."""
    try:
        last = await ws.app.state.jobs.ingest.store(run_id, events)
    except sqlite3.Error as e:  # what failed is not stored: the worker keeps it and resends
        if disk_full(e):  # 1013, try again later: it reconnects with its backoff
            await ws.close(code=status.WS_1013_TRY_AGAIN_LATER, reason="the server's disk is full")
        else:  # damage: the run cannot go on in this store
            await refuse(ws, run_id, status.WS_1011_INTERNAL_ERROR, f"the store cannot write: {e}")
        return False
    checker.accepted(events, last)
    await acks.stored_up_to(last)
    return True


def over_limit(ws: WebSocket, run_id: str, events: list[dict], size: int, last_seq: int) -> str | None:
    """Why storing this batch (`size` bytes of JSON, more than its events take in the store)
    would take the run past its storage limits, or None. A batch of events all stored already
    (a resend) passes. `last_seq`: the run's, as this connection knows it (not read from the
    store for every batch)."""
    settings, store = ws.app.state.settings, ws.app.state.jobs.store
    fresh = [e for e in events if e["seq"] > last_seq]
    if not fresh:
        return None
    if last_seq + len(fresh) > settings.run_max_events:
        return (f"the run reached its storage limit of {settings.run_max_events:,} events "
                "(GRADWATCH_RUN_MAX_EVENTS)")
    if store.stored_bytes(run_id) + size > settings.run_max_bytes:
        return (f"the run reached its storage limit of {settings.run_max_bytes:,} bytes of events "
                "(GRADWATCH_RUN_MAX_BYTES)")
    return None


async def refuse(ws: WebSocket, run_id: str, code: int, reason: str) -> None:
    """End the run for what its worker sent: ask the worker to stop (a local one would otherwise
    train on to no purpose), fail the run with the reason, log it, close the socket."""
    jobs = ws.app.state.jobs
    log.warning("run %s: ingest refused, the run ends failed: %s", run_id, reason)
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "control", "stop": True})
    jobs.finalize(run_id, "failed", f"the server refused what the worker sent: {reason}")
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=_close_reason(reason))


def _close_reason(text: str) -> str:
    """A close frame's reason holds at most 123 bytes of UTF-8."""
    data = text.encode()
    return text if len(data) <= 123 else data[:120].decode(errors="ignore") + "..."
