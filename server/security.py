"""Who may talk to the server: the token, browser sessions, and the Host and Origin checks.

Policy only, no ASGI plumbing (that is server/middleware.py). The model:

- There is always a token (GRADWATCH_TOKEN, or a random one made at start). API clients send
  `Authorization: Bearer <token>`.
- A browser signs in on /login: it posts the token, or a one-time code from a sign-in link
  (`/login#code=…`, printed at start or made by `POST /api/login/links`), and gets a session
  cookie. Nothing that signs in is ever in a URL the browser navigates to, so nothing that
  signs in is in its history (a used code signs in nobody).
- A session is a random value made at sign-in and known only to this server process (as a
  digest): signing out ends it, a restart ends them all, SESSION_IDLE_S unused ends it, and
  each use renews it. The cookie is HttpOnly and SameSite=Strict.
- Cookies are ambient, and they ignore ports: the browser adds ours to requests other pages
  make, and sends it to every port of the host. So a request that rides on the cookie must
  also say it comes from our own page, always: an Origin that is ours, or Sec-Fetch-Site
  same-origin (or `none`, a person's own navigation, for GET). Browsers set both and no page
  can change them.
- The Host header must be one of ours (DNS rebinding: a page on evil.example whose name
  re-resolves to 127.0.0.1 reaches this port with `Host: evil.example`).
Every comparison of secrets is constant-time; session values are looked up by digest.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Callable, Mapping
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from starlette.websockets import WebSocket

from .settings import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SESSION_IDLE_S = 12 * 3600  # a browser session unused this long ends (each use renews it)
LINK_CODE_S = 600  # a sign-in link made by POST /api/login/links works once, within this long
MAX_SESSIONS = 1000  # sessions kept at once; past it the least recently used one ends


def token_matches(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization")
    if value and value[:7].lower() == "bearer ":
        return value[7:].strip()
    return None


# ---- browser sessions -----------------------------------------------------------------------


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Sessions:
    """Browser sessions and one-time sign-in codes, in this process's memory only.

    Values are random (256 bits) and kept as digests: a session is looked up by the digest of
    what the cookie holds, so no comparison depends on how much of a secret matches."""

    def __init__(self, idle_s: float = SESSION_IDLE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.idle_s = idle_s
        self.clock = clock
        self._sessions: dict[str, list[float]] = {}  # digest -> [expires, renewed (cookie last sent)]
        self._codes: dict[str, float | None] = {}  # digest -> expires (None: until used)

    def create(self) -> str:
        """A new session; returns the cookie's value."""
        now = self.clock()
        self._prune(now)
        while len(self._sessions) >= MAX_SESSIONS:  # the least recently renewed one goes
            self._sessions.pop(min(self._sessions, key=lambda d: self._sessions[d][0]))
        value = secrets.token_urlsafe(32)
        self._sessions[_digest(value)] = [now + self.idle_s, now]
        return value

    def check(self, value: str | None) -> bool:
        if not value:
            return False
        entry = self._sessions.get(_digest(value))
        if entry is None:
            return False
        if entry[0] <= self.clock():
            self._sessions.pop(_digest(value), None)
            return False
        return True

    def touch(self, value: str) -> bool:
        """A request used the session: it lasts SESSION_IDLE_S from now. True when its cookie
        should be sent again (its Max-Age renewed too), about every quarter of that."""
        entry = self._sessions.get(_digest(value))
        if entry is None:
            return False
        now = self.clock()
        entry[0] = now + self.idle_s
        if now - entry[1] >= self.idle_s / 4:
            entry[1] = now
            return True
        return False

    def revoke(self, value: str | None) -> None:
        if value:
            self._sessions.pop(_digest(value), None)

    def __len__(self) -> int:
        return len(self._sessions)

    def identity(self, value: str) -> str:
        """A name for the session that is not its secret (for per-session limits)."""
        return "session:" + _digest(value)[:16]

    def link_code(self, lifetime_s: float | None = LINK_CODE_S) -> str:
        """A one-time sign-in code (`/login#code=<it>`), valid once, for lifetime_s (None: until used)."""
        now = self.clock()
        self._codes = {d: t for d, t in self._codes.items() if t is None or t > now}
        code = secrets.token_urlsafe(24)
        self._codes[_digest(code)] = None if lifetime_s is None else now + lifetime_s
        return code

    def use_code(self, code: str | None) -> bool:
        if not code:
            return False
        expires = self._codes.pop(_digest(code), 0.0)
        return expires is None or expires > self.clock()

    def _prune(self, now: float) -> None:
        for d in [d for d, (expires, _) in self._sessions.items() if expires <= now]:
            del self._sessions[d]


def cookie_name(settings: Settings) -> str:
    # Cookies ignore ports: two servers on localhost need two names.
    return f"gradwatch-session-{settings.port}"


def session_cookie(settings: Settings, value: str, secure: bool, idle_s: float = SESSION_IDLE_S) -> str:
    """The Set-Cookie header value that signs a browser in (or, with value "", out)."""
    parts = [f"{cookie_name(settings)}={value}", "Path=/", "HttpOnly", "SameSite=Strict",
             f"Max-Age={int(idle_s) if value else 0}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


def session_value(headers: Mapping[str, str], settings: Settings) -> str | None:
    """The session cookie's value, if the request carries one."""
    raw = headers.get("cookie")
    if not raw:
        return None
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:  # noqa: BLE001 - a malformed Cookie header is simply no session
        return None
    morsel = jar.get(cookie_name(settings))
    return morsel.value if morsel is not None else None


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
    """(exact names, suffixes): loopback, the bind address when it is one host, the host of
    GRADWATCH_PUBLIC_URL, and GRADWATCH_ALLOWED_HOSTS (a name, or `.example.com` for it and every subdomain)."""
    exact = set(LOOPBACK_NAMES)
    if settings.host not in ("0.0.0.0", "::", ""):
        exact.add(settings.host.strip("[]").lower())
    if settings.public_url:  # the name workers (and people) reach it by: GRADWATCH_PUBLIC_URL's
        exact.add((urlsplit(settings.public_url).hostname or "").lower())
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


def browser_request_ok(headers: Mapping[str, str], settings: Settings, method: str = "GET") -> bool:
    """A request that rides on the session cookie must say it comes from our own page: an Origin
    of ours, or Sec-Fetch-Site same-origin (`none`, a person's own navigation, for GET and
    HEAD). Neither header: refused (a replayed cookie, or a browser that sends neither: one on
    plain http to a name other than localhost; use https there)."""
    origin = headers.get("origin")
    if origin is not None and not origin_allowed(origin, headers.get("host"), settings):
        return False
    site = headers.get("sec-fetch-site")
    if site is not None:
        return site == "same-origin" or (site == "none" and method in ("GET", "HEAD"))
    return origin is not None


# ---- who is asking ----------------------------------------------------------------------


def http_identity(headers: Mapping[str, str], settings: Settings, sessions: Sessions,
                  method: str = "GET") -> str | None:
    """Who an HTTP request comes from: "token" (Bearer header), the session's identity (the
    session cookie, from our own page), or None. Never a ?token= on /api: query strings end up
    in logs and histories."""
    if token_matches(bearer(headers), settings.token):
        return "token"
    value = session_value(headers, settings)
    if sessions.check(value) and browser_request_ok(headers, settings, method):
        return sessions.identity(value)
    return None


def websocket_identity(headers: Mapping[str, str], query_token: str | None, settings: Settings,
                       sessions: Sessions) -> str | None:
    """Browser websockets: the session cookie, and only with our own Origin (browsers always
    send one). Other clients: the Bearer header, or ?token= where they cannot set headers."""
    if token_matches(bearer(headers) or query_token, settings.token):
        return "token"
    origin = headers.get("origin")
    value = session_value(headers, settings)
    if sessions.check(value) and origin is not None and origin_allowed(origin, headers.get("host"), settings):
        return sessions.identity(value)
    return None


def require_token(request: Request) -> None:
    """Dependency kept on the API routers: the middleware already checked; this is the
    second lock, should a route ever be mounted outside it."""
    state = request.app.state
    if http_identity(request.headers, state.settings, state.sessions, request.method) is None:
        raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})


def websocket_token_ok(ws: WebSocket) -> str | None:
    """The websocket's identity (see websocket_identity), or None."""
    state = ws.app.state
    return websocket_identity(ws.headers, ws.query_params.get("token"), state.settings, state.sessions)
