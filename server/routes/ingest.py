"""WS /api/ingest/{run_id}: the one protocol every worker speaks.

server → worker, on connect: {"type": "hello", "run_id", "acked_seq", "config"}
worker → server: {"type": "batch", "events": [{"type", "seq", ...}, ...]}
                 {"type": "heartbeat"} when it has nothing to send for a second (not stored, not acked)
server → worker: {"type": "ack", "seq": last stored seq}, and {"type": "control", ...}
The run's own token is checked before accept(); a wrong one is closed with 1008.
"""

from __future__ import annotations

import contextlib
from typing import Any

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from trainer.events import HEARTBEAT, TERMINAL

from ..security import bearer, token_matches

router = APIRouter(prefix="/api", tags=["ingest"])

MAX_INGEST_MESSAGE = 4 * 1024 * 1024  # one batch; the worker sends at most 512 events per message
MAX_EVENTS_PER_BATCH = 2048


@router.websocket("/ingest/{run_id}")
async def ingest(ws: WebSocket, run_id: str) -> None:
    jobs = ws.app.state.jobs
    run = jobs.store.get_run(run_id)
    given = bearer(ws.headers) or ws.query_params.get("token")
    if run is None or not token_matches(given, run["token"]):
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="unknown run or wrong token")
        return
    await ws.accept()
    if run["status"] in TERMINAL:
        await ws.send_json({"type": "error", "message": f"run {run_id} is already {run['status']}"})
        await ws.close(code=status.WS_1008_POLICY_VIOLATION)
        return
    jobs.attach(run_id, ws)
    jobs.liveness.seen(run_id)
    try:
        await ws.send_json({"type": "hello", "run_id": run_id, "acked_seq": run["last_seq"],
                            "config": run["config"]})
        await jobs.flush_pending_control(run_id)
        while True:
            raw = await ws.receive()
            if raw["type"] == "websocket.disconnect":
                break
            data = raw.get("bytes") or (raw.get("text") or "").encode()
            if len(data) > MAX_INGEST_MESSAGE:
                await ws.close(code=status.WS_1009_MESSAGE_TOO_BIG)
                break
            jobs.liveness.seen(run_id)
            if len(data) < 64 and _is_heartbeat(data):
                continue
            events = _parse_batch(data)
            if events is None:
                await ws.close(code=status.WS_1003_UNSUPPORTED_DATA, reason="expected a batch of events")
                break
            last = jobs.ingest_batch(run_id, events)
            await ws.send_json({"type": "ack", "seq": last})
    except WebSocketDisconnect:
        pass
    finally:
        jobs.detach(run_id, ws)
        with contextlib.suppress(Exception):
            await ws.close()


def _is_heartbeat(data: bytes) -> bool:
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(msg, dict) and msg.get("type") == HEARTBEAT


def _parse_batch(data: bytes) -> list[dict[str, Any]] | None:
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(msg, dict) or msg.get("type") != "batch" or not isinstance(msg.get("events"), list):
        return None
    events = msg["events"]
    if len(events) > MAX_EVENTS_PER_BATCH:
        return None
    for e in events:
        if not (isinstance(e, dict) and isinstance(e.get("type"), str) and isinstance(e.get("seq"), int)
                and not isinstance(e.get("seq"), bool) and e["seq"] > 0):
            return None
    return events
