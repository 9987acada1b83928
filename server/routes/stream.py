"""WS /api/stream: live events for browsers, all runs or those in ?runs=a,b.

Resume: `?since=a:42,b:17` first replays, from the store, every event of run a after seq 42
and of run b after 17, then goes on live, with no gap and no duplicate. (Subscribing and reading
the store happen with no await between them, and the store is written before anything is
published, so every live message that follows is newer than the replay.) A gap of more than
REPLAY_MAX events gets a `resync` for that run instead: fetch it with /metrics?since=.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from ..security import websocket_token_ok

router = APIRouter(prefix="/api", tags=["stream"])

MAX_CLIENT_MESSAGE = 64 * 1024  # browsers only send small subscribe messages
REPLAY_MAX = 10_000  # events replayed per run on resume; more is a resync (downsampled history)
MAX_SINCE_RUNS = 1000


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    if not websocket_token_ok(ws, ws.app.state.settings.token):
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong token")
        return
    hub = ws.app.state.hub
    runs_param = ws.query_params.get("runs")
    runs = {r for r in runs_param.split(",") if r} if runs_param else None
    since = _parse_since(ws.query_params.get("since"))
    await ws.accept()
    if since is None:
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="since= must be run:seq,run:seq,...")
        return
    sub = hub.subscribe(runs or None)
    replay = _replay(ws.app.state.jobs, sub, since)  # no await since subscribe: see the docstring
    try:
        for text in replay:
            await ws.send_text(text)
        del replay
        async with asyncio.TaskGroup() as tg:
            sender = tg.create_task(_send_loop(ws, sub))
            await _receive_loop(ws, sub)
            sender.cancel()
    except* (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        hub.unsubscribe(sub)
        with contextlib.suppress(Exception):
            await ws.close()


def _parse_since(raw: str | None) -> dict[str, int] | None:
    """`a:42,b:17` -> {"a": 42, "b": 17}; None when malformed."""
    out: dict[str, int] = {}
    for part in (raw or "").split(","):
        if not part:
            continue
        run_id, _, seq = part.rpartition(":")
        if not run_id or not seq.isdigit() or len(seq) > 18 or len(out) >= MAX_SINCE_RUNS:
            return None
        out[run_id] = int(seq)
    return out


def _replay(jobs, sub, since: dict[str, int]) -> list[str]:  # noqa: ANN001
    """The stored events each resumed run missed, then its current record (its status may have
    changed without an event: stalled and back)."""
    store, out = jobs.store, []
    for run_id, seq in since.items():
        run = store.get_run(run_id)
        if run is None or not sub.wants(run_id):
            continue
        if run["last_seq"] - seq > REPLAY_MAX:
            out.append(orjson.dumps({"type": "resync", "run_id": run_id, "seq": seq}).decode())
        else:  # each stored object with the run's id put in front, not parsed (10k events: ~0.4 s)
            head = '{"run_id":' + orjson.dumps(run_id).decode() + ","
            out += [head + text[1:] for text in store.events_json(run_id, seq)]
        out.append(orjson.dumps({"type": "run.update", "run_id": run_id, "seq": run["last_seq"],
                                 "run": jobs.view(run)}).decode())
    return out


async def _send_loop(ws: WebSocket, sub) -> None:  # noqa: ANN001
    while True:
        await ws.send_text(await sub.get())


async def _receive_loop(ws: WebSocket, sub) -> None:  # noqa: ANN001
    while True:
        text = await ws.receive_text()
        if len(text) > MAX_CLIENT_MESSAGE:
            await ws.close(code=status.WS_1009_MESSAGE_TOO_BIG)
            return
        try:
            msg = orjson.loads(text)
        except orjson.JSONDecodeError:
            continue
        if isinstance(msg, dict) and msg.get("type") == "subscribe":
            runs = msg.get("runs")
            sub.runs = {str(r) for r in runs} if runs else None
