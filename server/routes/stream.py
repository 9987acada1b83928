"""WS /api/stream: live events for browsers, all runs or those in ?runs=a,b.

Resume: `?since=a:42,b:17` first replays, from the store, every event of run a after seq 42
and of run b after 17, then goes on live, with no gap and no duplicate. (Subscribing and reading
the store happen with no await between them, and the store is written before anything is
published, so every live message that follows is newer than the replay.) A gap of more than
REPLAY_MAX events gets a `resync` for that run instead: fetch it with /metrics?since=.

Frames: each websocket message is a JSON array of messages (every event published since the
previous frame, at most one frame per ~50 ms: server/hub.py), replays included. `?frames=single`
asks for the old framing instead, one JSON object per websocket message.

Sockets are counted: at most GRADWATCH_MAX_STREAMS open at once, and GRADWATCH_MAX_STREAMS_PER_SESSION
per browser session (or per token, for API clients); past either, the socket is accepted and closed
at once with 1013 (try again later) and a reason that names the limit. A browser sends only
`{"type": "subscribe", "runs": [ids] | null}`; anything else closes the socket (1003).
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
REPLAY_FRAME = 500  # replayed messages per frame (batched framing)
MAX_SINCE_RUNS = 1000


@router.websocket("/stream")
async def stream(ws: WebSocket) -> None:
    who = ws.scope.get("state", {}).get("identity") or websocket_token_ok(ws)  # the guard's, or checked here
    if who is None:
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="missing or wrong token")
        return
    hub = ws.app.state.hub
    runs = _parse_runs(ws.query_params.get("runs"))
    since = _parse_since(ws.query_params.get("since"))
    frames = ws.query_params.get("frames", "batch")
    await ws.accept()
    if since is None or runs is False or frames not in ("batch", "single"):
        await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason="since= must be run:seq,run:seq,...; "
                       f"runs= at most {MAX_SINCE_RUNS} ids; frames= batch or single")
        return
    full = _over_cap(ws, who)
    if full:
        await ws.close(code=status.WS_1013_TRY_AGAIN_LATER, reason=full)
        return
    open_streams: dict[str, set[WebSocket]] = ws.app.state.streams
    open_streams.setdefault(who, set()).add(ws)
    sub = hub.subscribe(runs or None, batched=frames == "batch")
    try:
        replay = _replay(ws.app.state.jobs, sub, since)  # no await since subscribe: see the docstring
        if sub.batched:
            replay = ["[" + ",".join(replay[i:i + REPLAY_FRAME]) + "]" for i in range(0, len(replay), REPLAY_FRAME)]
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
        mine = open_streams.get(who)
        if mine is not None:
            mine.discard(ws)
            if not mine:
                del open_streams[who]
        with contextlib.suppress(Exception):
            await ws.close()


def _over_cap(ws: WebSocket, who: str) -> str | None:
    settings, open_streams = ws.app.state.settings, ws.app.state.streams
    if sum(len(v) for v in open_streams.values()) >= settings.max_streams:
        return f"too many live streams open ({settings.max_streams}, GRADWATCH_MAX_STREAMS)"
    if len(open_streams.get(who, ())) >= settings.max_streams_per_session:
        return (f"this session has {settings.max_streams_per_session} live streams open already "
                "(GRADWATCH_MAX_STREAMS_PER_SESSION): close some tabs")
    return None


async def close_streams(app, who: str, reason: str) -> None:  # noqa: ANN001
    """Close every stream socket of one session (it signed out)."""
    for ws in list(app.state.streams.get(who, ())):
        with contextlib.suppress(Exception):
            await ws.close(code=status.WS_1008_POLICY_VIOLATION, reason=reason)


def _parse_runs(raw: str | None) -> set[str] | None | bool:
    """`a,b` -> {"a", "b"}; None for all runs; False when there are too many."""
    if not raw:
        return None
    runs = {r for r in raw.split(",") if r}
    return runs if len(runs) <= MAX_SINCE_RUNS else False


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
            out += [head + text[1:] if '"run_id"' not in text else _with_run_id(text, run_id)
                    for text in store.events_json(run_id, seq)]
        out.append(orjson.dumps({"type": "run.update", "run_id": run_id, "seq": run["last_seq"],
                                 "run": jobs.view(run)}).decode())
    return out


async def _send_loop(ws: WebSocket, sub) -> None:  # noqa: ANN001
    while True:
        await ws.send_text(await sub.get())


def _with_run_id(text: str, run_id: str) -> str:
    """A stored event that carries a run_id of its own (stored by a version that did not refuse
    one): the run's id replaces it, rather than a second key after it."""
    event = orjson.loads(text)
    event.pop("run_id", None)
    return orjson.dumps({"run_id": run_id, **event}).decode()


async def _receive_loop(ws: WebSocket, sub) -> None:  # noqa: ANN001
    while True:
        raw = await ws.receive()
        if raw["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(raw.get("code", 1000))
        text = raw.get("text")
        if text is None:
            await ws.close(code=status.WS_1003_UNSUPPORTED_DATA, reason="expected text: a subscribe message")
            return
        if len(text) > MAX_CLIENT_MESSAGE:
            await ws.close(code=status.WS_1009_MESSAGE_TOO_BIG)
            return
        runs = _subscription(text)
        if runs is False:
            await ws.close(code=status.WS_1003_UNSUPPORTED_DATA,
                           reason='expected {"type": "subscribe", "runs": [run ids] or null}')
            return
        sub.runs = runs


def _subscription(text: str) -> set[str] | None | bool:
    """A subscribe message's runs (None: all), or False for anything else."""
    try:
        msg = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(msg, dict) or msg.get("type") != "subscribe":
        return False
    runs = msg.get("runs")
    if runs is None or runs == []:
        return None
    if not (isinstance(runs, list) and len(runs) <= MAX_SINCE_RUNS
            and all(isinstance(r, str) and 0 < len(r) <= 64 for r in runs)):
        return False
    return set(runs)
