"""Token checks. With a token configured, every /api route but health needs
`Authorization: Bearer <token>`; websockets accept the same header or `?token=`."""

from __future__ import annotations

import hmac

from fastapi import HTTPException, Request
from starlette.websockets import WebSocket


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def bearer(headers: dict | object) -> str | None:
    value = headers.get("authorization")  # type: ignore[attr-defined]
    if value and value.lower().startswith("bearer "):
        return value[7:].strip()
    return None


def require_token(request: Request) -> None:
    expected = request.app.state.settings.token
    if expected is None:
        return
    if not token_matches(bearer(request.headers), expected):
        raise HTTPException(401, "missing or wrong token: send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})


def websocket_token_ok(ws: WebSocket, expected: str | None) -> bool:
    if expected is None:
        return True
    given = bearer(ws.headers) or ws.query_params.get("token")
    return token_matches(given, expected)
