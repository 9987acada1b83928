"""Signing a browser in and out: the /login page, and the session it gets.

The token never travels in a URL a browser opens (it would stay in the browser's history): the
page posts it, or a one-time code from a sign-in link (`/login#code=…`: a fragment, never sent
to the server, read by the page and taken out of the address bar; a used code signs in nobody).
The answer sets a session cookie (server/security.py: random per sign-in, ended by signing out,
by a restart, or by SESSION_IDLE_S unused). `POST /api/login` is public; the rest need the token
or a session.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from .. import security
from ..static import frontend_dir
from .stream import close_streams

router = APIRouter(tags=["session"])

FRONTEND = frontend_dir()


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: Annotated[str, Field(max_length=1024, description="the server's token")] | None = None
    code: Annotated[str, Field(max_length=256, description="a one-time code from a sign-in link")] | None = None


class LoginLink(BaseModel):
    url: str = Field(description="open it in a browser: it signs that browser in, once")
    expires_in: float = Field(description="seconds left to open it")


class Session(BaseModel):
    kind: str = Field(description="'session' (a browser's cookie) or 'token' (the Bearer header)")
    expires_in: float | None = Field(None, description="a session: seconds before it ends unless used")


@router.get("/login", include_in_schema=False)
def login_page() -> FileResponse:
    return FileResponse(FRONTEND / "login.html", headers={"Cache-Control": "no-cache"})


@router.post("/api/login", status_code=204, responses={401: {"description": "wrong token or code"}})
async def login(body: Login, request: Request, response: Response) -> None:
    """Sign a browser in with the token or a one-time code: a session cookie, nothing else."""
    settings, sessions = request.app.state.settings, request.app.state.sessions
    ok = (body.token is not None and security.token_matches(body.token, settings.token)) \
        or (body.code is not None and sessions.use_code(body.code))
    if not ok:
        raise HTTPException(401, "wrong token, or a sign-in link that was used or is too old: "
                                 "paste the token (GRADWATCH_TOKEN, or the one `gradwatch serve` printed)")
    secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
    response.headers["set-cookie"] = security.session_cookie(settings, sessions.create(), secure, sessions.idle_s)
    response.headers["cache-control"] = "no-store"


@router.post("/api/logout", status_code=204, dependencies=[Depends(security.require_token)])
async def logout(request: Request, response: Response) -> None:
    """End this browser's session (its cookie stops working at once, here and anywhere it was
    copied to) and close its live streams."""
    settings, sessions = request.app.state.settings, request.app.state.sessions
    value = security.session_value(request.headers, settings)
    if value and sessions.check(value):
        who = sessions.identity(value)
        sessions.revoke(value)
        await close_streams(request.app, who, "signed out")
    response.headers["set-cookie"] = security.session_cookie(settings, "", secure=False)


@router.get("/api/session", response_model=Session, dependencies=[Depends(security.require_token)])
async def session(request: Request) -> dict[str, Any]:
    """Who this request is signed in as; 401 (from the guard) when it is not."""
    settings, sessions = request.app.state.settings, request.app.state.sessions
    value = security.session_value(request.headers, settings)
    if security.token_matches(security.bearer(request.headers), settings.token) or not sessions.check(value):
        return {"kind": "token"}
    return {"kind": "session", "expires_in": sessions.idle_s}


@router.post("/api/login/links", status_code=201, response_model=LoginLink,
             dependencies=[Depends(security.require_token)])
async def login_link(request: Request) -> dict[str, Any]:
    """A one-time sign-in link for a browser (valid once, for LINK_CODE_S): how a script, or a
    signed-in browser, signs another browser in without putting the token in its address bar."""
    code = request.app.state.sessions.link_code()
    return {"url": f"/login#code={code}", "expires_in": security.LINK_CODE_S}
