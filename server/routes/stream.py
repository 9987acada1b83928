"""WS /api/stream: live events for browsers, all runs or those in ?runs=a,b."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from fastapi import APIRouter, WebSocket, WebSocketDisconnect, status

from ..security import websocket_token_ok

router = APIRouter(prefix="/api", tags=["stream"])

MAX_CLIENT_MESSAGE = 64 * 1024  # browsers only send small subscribe messages


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    if not websocket_token_ok(ws, ws.app.state.settings.token):
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong token")
        return
    hub = ws.app.state.hub
    runs_param = ws.query_params.get("runs")
    runs = {r for r in runs_param.split(",") if r} if runs_param else None
    await ws.accept()
    sub = hub.subscribe(runs or None)
    try:
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


async def _send_loop(ws: WebSocket, sub) -> None:  # noqa: ANN001
    while True:
        data = await sub.queue.get()
        await ws.send_text(data.decode())


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
