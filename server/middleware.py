"""The guard in front of every route: one pure-ASGI middleware, so no route can forget it.

In order, for HTTP requests and websocket upgrades alike:
1. Host allow-list -> 400 (DNS rebinding).
2. Authentication (server/security.py) for everything but /api/health, the sign-in page and
   its POST, and static files -> 401 over HTTP; websockets are refused before accept() (close
   1008, an HTTP 403 to the client). The ingest websocket is left to its route, which takes
   only its run's token. The page itself (`/`) sends a browser that is not signed in to
   /login, keeping the rest of its address (the view) for after; a `?token=` there signs
   nobody in any more (it would stay in the browser's history) and is dropped.
3. Origin: a foreign Origin is refused on every websocket and every state-changing request
   -> 403. No CORS headers are ever sent, so other origins cannot read any answer either.
4. State changes (POST/PUT/PATCH/DELETE) with a body take JSON only -> 415, and any body over
   MAX_BODY bytes -> 413, decided from Content-Length or while counting the stream, before the
   whole body is read.
A request that used a session renews it (and now and then its cookie). Every HTTP answer also
carries headers that keep the page out of frames and referrers, and a Content-Security-Policy
that lets the page run only its own scripts.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote_plus, urlencode

import orjson
from fastapi.encoders import jsonable_encoder
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import security
from .settings import Settings

MAX_BODY = 1024 * 1024  # bytes; the largest real request (an ablation group) is a few KiB
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
PUBLIC_PATHS = ("/api/health", "/favicon.ico", "/login")
PUBLIC_POSTS = ("/api/login",)  # the sign-in itself (it checks the token or code it is given)
PUBLIC_PREFIXES = ("/static/",)
SELF_AUTHENTICATED_WS = ("/api/ingest/",)  # the route checks the run's own token
# The page runs its own scripts only (no inline script, no eval, nothing from elsewhere); Plotly
# sets inline styles; images are the page's own or data: (icons, PNG downloads).
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"content-security-policy", CSP.encode()),
    (b"referrer-policy", b"no-referrer"),
]


def query_token(query: str) -> str | None:
    """The value of a `token=` query parameter, named exactly so: `?%74oken=` is no token (the
    log scrubber would have to know every spelling of the name; the server takes one)."""
    for part in query.split("&"):
        if part.startswith("token="):
            return unquote_plus(part[6:])
    return None


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings, sessions: security.Sessions) -> None:
        self.app = app
        self.settings = settings
        self.sessions = sessions
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
            token = query_token(scope.get("query_string", b"").decode("latin-1"))
            who = security.websocket_identity(headers, token, s, self.sessions)
            if who is None:
                return await _deny_websocket(scope, send, None, "missing or wrong token")
            scope.setdefault("state", {})["identity"] = who
        await self.app(scope, receive, send)

    # ---- HTTP --------------------------------------------------------------------------

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        s = self.settings
        method, path = scope["method"], scope["path"]
        send = _with_security_headers(send)
        if not security.host_allowed(headers.get("host"), s):
            return await _json(send, 400, "Host header not allowed: add the name to GRADWATCH_ALLOWED_HOSTS")
        who = security.http_identity(headers, s, self.sessions, method)
        if path == "/" and method in ("GET", "HEAD"):
            query = scope.get("query_string", b"").decode("latin-1")
            pairs = parse_qsl(query, keep_blank_values=True)
            if who is None or any(k == "token" for k, _ in pairs):
                if any(k == "token" for k, _ in pairs):
                    query = urlencode([(k, v) for k, v in pairs if k != "token"])
                view = "/?" + query if query else "/"  # the view, as the address had it
                return await _redirect(send, view if who is not None else "/login?next=" + quote(view, safe=""))
        public = (method in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))) \
            or (method == "POST" and path in PUBLIC_POSTS)
        if not public and who is None:
            return await _json(send, 401, "missing or wrong token: send Authorization: Bearer <token>, "
                                          "or sign in at /login",
                               [(b"www-authenticate", b"Bearer")])
        if who is not None and who.startswith("session:"):
            value = security.session_value(headers, s)
            if self.sessions.touch(value):  # renewed: send the cookie again, with a fresh Max-Age
                send = _with_cookie(send, security.session_cookie(s, value, _secure(scope, headers),
                                                                  self.sessions.idle_s))
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


def _secure(scope: Scope, headers: Headers) -> bool:
    """Is the browser on https (directly, or through a proxy that says so)?"""
    return scope.get("scheme") == "https" or headers.get("x-forwarded-proto") == "https"


async def _redirect(send: Send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location.encode()), (b"cache-control", b"no-store"), (b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})


def _with_cookie(send: Send, cookie: str) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie.encode())]}
        await send(message)

    return wrapped


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

_QUERY_PARAM = re.compile(r"([?&])([^=&\s\"?#]*)=([^&\s\"#]*)")


def scrub_query(text: str) -> str:
    """Every query parameter whose name decodes to `token` (`token`, `%74oken`, `t%6fken`, …)
    gets the value `[hidden]`."""
    def hide(m: re.Match[str]) -> str:
        name = m.group(2)
        if "oken" not in name.lower() and "%" not in name:
            return m.group(0)
        return f"{m.group(1)}{name}=[hidden]" if unquote_plus(name).strip().lower() == "token" else m.group(0)

    return _QUERY_PARAM.sub(hide, text) if "=" in text else text


class ScrubTokens(logging.Filter):
    """uvicorn's access log prints request paths, query strings included: hide token values,
    however the parameter's name is spelled."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(scrub_query(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = scrub_query(record.msg)
        return True


SCRUB = ScrubTokens()


def scrub_token_logs(*names: Any) -> None:
    for name in names or ("uvicorn.access", "uvicorn.error", "uvicorn"):
        logging.getLogger(name).addFilter(SCRUB)
