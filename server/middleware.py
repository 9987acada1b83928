"""The guard in front of every route: one pure-ASGI middleware, so no route can forget it.

In order, for HTTP requests and websocket upgrades alike:
1. Host allow-list -> 400 (DNS rebinding).
2. `GET /?token=...` -> the session cookie and a redirect to `/` without the token.
3. Authentication (server/security.py) for everything but the page shell and /api/health
   -> 401 over HTTP; websockets are refused before accept() (close 1008, an HTTP 403 to the
   client). The ingest websocket is left to its route, which takes only its run's token.
4. Origin: a foreign Origin is refused on every websocket and every state-changing request
   -> 403. No CORS headers are ever sent, so other origins cannot read any answer either.
5. State changes (POST/PUT/PATCH/DELETE) with a body take JSON only -> 415, and any body over
   MAX_BODY bytes -> 413, decided from Content-Length or while counting the stream, before the
   whole body is read.
Every HTTP answer also carries headers that keep the page out of frames and referrers.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi.encoders import jsonable_encoder
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import security
from .settings import Settings

MAX_BODY = 1024 * 1024  # bytes; the largest real request (an ablation group) is a few KiB
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
PUBLIC_PATHS = ("/", "/api/health", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
SELF_AUTHENTICATED_WS = ("/api/ingest/",)  # the route checks the run's own token
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"referrer-policy", b"no-referrer"),
]


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        settings.ensure_token()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    # ---- websockets ----------------------------------------------------------------------

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        s = self.settings
        if not security.host_allowed(headers.get("host"), s):
            return await _deny_websocket(scope, send, 400, "Host header not allowed")
        origin = headers.get("origin")
        if origin is not None and not security.origin_allowed(origin, headers.get("host"), s):
            return await _deny_websocket(scope, send, 403, "Origin not allowed")
        if not scope["path"].startswith(SELF_AUTHENTICATED_WS):
            query_token = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"))).get("token")
            if not security.websocket_authenticated(headers, query_token, s):
                return await _deny_websocket(scope, send, None, "missing or wrong token")
        await self.app(scope, receive, send)

    # ---- HTTP --------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        s = self.settings
        method, path = scope["method"], scope["path"]
        send = _with_security_headers(send)
        if not security.host_allowed(headers.get("host"), s):
            return await _json(send, 400, "Host header not allowed: add the name to GRADWATCH_ALLOWED_HOSTS")
        query = scope.get("query_string", b"").decode("latin-1")
        if path == "/" and method in ("GET", "HEAD") and "token" in dict(parse_qsl(query)):
            return await self._exchange(scope, query, headers, send)
        public = method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))
        if not public and not security.http_authenticated(headers, s):
            return await _json(send, 401, "missing or wrong token: send Authorization: Bearer <token>, "
                                          "or open the URL `gradwatch serve` printed",
                               [(b"www-authenticate", b"Bearer")])
        origin = headers.get("origin")
        if method in UNSAFE_METHODS and origin is not None and not security.origin_allowed(
                origin, headers.get("host"), s):
            return await _json(send, 403, f"Origin {origin} not allowed: add it to GRADWATCH_ALLOWED_ORIGINS")
        if method in UNSAFE_METHODS:
            has_body = "content-length" in headers and headers["content-length"] != "0" \
                or "transfer-encoding" in headers
            ctype = headers.get("content-type")
            if (has_body or ctype is not None) and not _is_json(ctype):
                return await _json(send, 415, f"Expected Content-Type application/json, but got {ctype!r}")
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _json(send, 400, "bad Content-Length")
            if int(length) > MAX_BODY:
                return await _json(send, 413, f"request body over {MAX_BODY} bytes")
        elif "transfer-encoding" in headers:
            body = await _read_capped(receive)
            if body is None:
                return await _json(send, 413, f"request body over {MAX_BODY} bytes")
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _exchange(self, scope: Scope, query: str, headers: Headers, send: Send) -> None:
        """`/?token=X`: sign the browser in with a cookie, send it to the same page without X."""
        pairs = parse_qsl(query, keep_blank_values=True)
        given = dict(pairs).get("token")
        if not security.token_matches(given, self.settings.token):
            return await _json(send, 401, "wrong token in the link: open the URL `gradwatch serve` printed")
        rest = urlencode([(k, v) for k, v in pairs if k != "token"])
        secure = scope.get("scheme") == "https" or headers.get("x-forwarded-proto") == "https"
        await send({"type": "http.response.start", "status": 303, "headers": [
            (b"location", ("/?" + rest if rest else "/").encode()),
            (b"set-cookie", security.session_cookie(self.settings, secure).encode()),
            (b"cache-control", b"no-store"), (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _is_json(ctype: str | None) -> bool:
    if ctype is None:
        return False
    media = ctype.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def _read_capped(receive: Receive) -> bytes | None:
    """A chunked body, read until it ends or passes MAX_BODY (then None: the rest stays unread)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _with_security_headers(send: Send) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {k.lower() for k, _ in message.get("headers", [])}
            extra = [(k, v) for k, v in SECURITY_HEADERS if k not in names]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return wrapped


async def _json(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = orjson.dumps({"detail": detail})
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _deny_websocket(scope: Scope, send: Send, status: int | None, detail: str) -> None:
    """Refuse an upgrade before accept(): with an HTTP status where the server can send one,
    else close 1008 (which the server answers as 403)."""
    if status is not None and "websocket.http.response" in scope.get("extensions", {}):
        body = orjson.dumps({"detail": detail})
        await send({"type": "websocket.http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": detail})


# ---- 422s for any input --------------------------------------------------------------------


async def validation_error(request: Any, exc: Any) -> Response:
    """FastAPI's 422, for any input at all. The default handler answers 500 when the rejected
    input it echoes is `Infinity`/`NaN` (Python's json parses them); orjson would also refuse
    lone surrogates and integers past 64 bits. Non-finite numbers become null, the rest is
    escaped to ASCII."""
    detail = _finite(jsonable_encoder(exc.errors()))
    return Response(json.dumps({"detail": detail}, ensure_ascii=True, allow_nan=False), status_code=422,
                    media_type="application/json")


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---- logs never show a token --------------------------------------------------------------

_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")


class ScrubTokens(logging.Filter):
    """uvicorn's access log prints request paths, query strings included: hide ?token= values."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1[hidden]", a) if isinstance(a, str) else a
                                for a in record.args)
        if isinstance(record.msg, str) and "token=" in record.msg:
            record.msg = _TOKEN_IN_QUERY.sub(r"\1[hidden]", record.msg)
        return True


SCRUB = ScrubTokens()


def scrub_token_logs(*names: Any) -> None:
    for name in names or ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(SCRUB)
