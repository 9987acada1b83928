"""Who may talk to the server: the token, the session cookie, and the Host and Origin checks.

Policy only, no ASGI plumbing (that is server/middleware.py). The model, as Jupyter's:

- There is always a token (GRADWATCH_TOKEN, or a random one made at start and printed in the
  URL to open). API clients send `Authorization: Bearer <token>`.
- A browser opens `/?token=<token>` once; the server answers with a session cookie (HttpOnly,
  SameSite=Strict) and a redirect to `/`, so the token leaves the address bar and history.
  The cookie holds an HMAC of the token, not the token: it survives a server restart, and a
  new token ends every session.
- Cookies are ambient (the browser adds them to requests other pages make), so a request
  that rides on the cookie must also come from our own origin: its Origin header, when there
  is one, must be ours, and its Sec-Fetch-Site, when there is one, same-origin.
- The Host header must be one of ours (DNS rebinding: a page on evil.example whose name
  re-resolves to 127.0.0.1 reaches this port with `Host: evil.example`).
Every comparison of secrets is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.websockets import WebSocket

from .settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SESSION_DAYS = 30  # a browser stays signed in this long (or until the token changes)


def token_matches(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


# ---- the session cookie -------------------------------------------------------------------


def cookie_name(settings: Settings) -> str:
    # Cookies ignore ports: two servers on localhost need two names.
    return f"gradwatch-session-{settings.port}"


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"gradwatch browser session v1", hashlib.sha256).hexdigest()


def session_cookie(settings: Settings, secure: bool) -> str:
    """The Set-Cookie header value that signs a browser in."""
    parts = [f"{cookie_name(settings)}={session_value(settings.token)}", "Path=/", "HttpOnly",
             "SameSite=Strict", f"Max-Age={SESSION_DAYS * 86400}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def cookie_session_ok(headers: Mapping[str, str], settings: Settings) -> bool:
    raw = headers.get("cookie")
    if not raw or settings.token is None:
        return False
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is simply no session
        return False
    morsel = jar.get(cookie_name(settings))
    return morsel is not None and token_matches(morsel.value, session_value(settings.token))


# ---- Host and Origin ------------------------------------------------------------------


def split_host(value: str) -> str | None:
    """`host[:port]` of a Host header or an origin's netloc -> the lower-case name, or None."""
    value = value.strip().lower()
    if not value or any(c.isspace() or c in "/\\@?#" for c in value):
        return None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        name, rest = value[1:end], value[end + 1:]
        try:
            ipaddress.IPv6Address(name)
        except ValueError:
            return None
    else:
        name, _, port = value.partition(":")
        rest = ":" + port if port else ""
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name.rstrip(".") or None


def allowed_host_names(settings: Settings) -> tuple[set[str], tuple[str, ...]]:
    """(exact names, suffixes): loopback, the bind address when it is one host, and
    GRADWATCH_ALLOWED_HOSTS (a name, or `.example.com` for it and every subdomain)."""
    exact = set(LOOPBACK_NAMES)
    if settings.host not in ("0.0.0.0", "::", ""):
        exact.add(settings.host.strip("[]").lower())
    suffixes = []
    for h in settings.allowed_hosts:
        h = h.strip().lower().strip("[]").rstrip(".")
        if h.startswith("."):
            suffixes.append(h)
            exact.add(h[1:])
        elif h:
            exact.add(h)
    return exact, tuple(suffixes)


def host_allowed(host_header: str | None, settings: Settings) -> bool:
    name = split_host(host_header or "")
    if name is None:
        return False
    exact, suffixes = allowed_host_names(settings)
    return name in exact or name.endswith(suffixes)


def origin_allowed(origin: str, host_header: str | None, settings: Settings) -> bool:
    """Our own origin (same host:port as the request's Host), or one in GRADWATCH_ALLOWED_ORIGINS."""
    origin = origin.strip().lower().rstrip("/")
    if origin in {o.lower().rstrip("/") for o in settings.allowed_origins}:
        return True
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
        return False
    return host_header is not None and parts.netloc == host_header.strip().lower()


def browser_request_ok(headers: Mapping[str, str], settings: Settings) -> bool:
    """A request that carries ambient credentials must come from our own page."""
    origin = headers.get("origin")
    if origin is not None and not origin_allowed(origin, headers.get("host"), settings):
        return False
    return headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


# ---- who is asking ----------------------------------------------------------------------


def http_authenticated(headers: Mapping[str, str], settings: Settings) -> bool:
    """Bearer header, or the session cookie from our own origin. Never a ?token= on /api:
    query strings end up in logs and histories."""
    if token_matches(bearer(headers), settings.token):
        return True
    return cookie_session_ok(headers, settings) and browser_request_ok(headers, settings)


def websocket_authenticated(headers: Mapping[str, str], query_token: str | None, settings: Settings) -> bool:
    """Browser websockets: the session cookie, and only with our own Origin (browsers always
    send one). Other clients: the Bearer header, or ?token= where they cannot set headers."""
    if token_matches(bearer(headers) or query_token, settings.token):
        return True
    origin = headers.get("origin")
    return (cookie_session_ok(headers, settings) and origin is not None
            and origin_allowed(origin, headers.get("host"), settings))


def require_token(request: Request) -> None:
    """Dependency kept on the API routers: the middleware already checked; this is the
    second lock, should a route ever be mounted outside it."""
    if not http_authenticated(request.headers, request.app.state.settings):
        raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})


def websocket_token_ok(ws: WebSocket, expected: str | None = None) -> bool:
    return websocket_authenticated(ws.headers, ws.query_params.get("token"), ws.app.state.settings)
