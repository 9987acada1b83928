"""create_app(settings): the FastAPI app. The lifespan owns the Store, Hub and JobManager;
nothing heavy happens at import time."""

from __future__ import annotations

import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response

from . import __version__
from .hub import Hub
from .jobs import JobManager
from .launcher import Launcher, make_launcher
from .middleware import Guard, scrub_token_logs, validation_error
from .routes import groups, health, ingest, presets, runs, session, stream
from .security import Sessions, require_token
from .settings import Settings, SettingsError
from .static import CompressedStaticFiles, compressed, frontend_dir
from .store import Store, StoreError, disk_full

log = logging.getLogger("gradwatch")
FRONTEND = frontend_dir()  # package data (gradwatch.frontend): a checkout, an editable install or a wheel


def private_dir(path: Path) -> None:
    """The data folder is this user's only (0700): it holds the store, worker logs, datasets.
    (One the server may not chmod, say a volume owned by someone else, stays as it is, with a
    warning: the database files in it are 0600 anyway.)"""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        try:
            path.chmod(0o700)
        except OSError as e:
            log.warning("data dir %s: could not make it private (0700): %s", path, e)


def create_app(settings: Settings | None = None, store: Store | None = None,
               launcher: Launcher | None = None) -> FastAPI:
    """`store`: one opened already (`gradwatch serve` opens it first, to refuse a damaged or
    read-only database with one line instead of a traceback from the lifespan). `launcher`: how
    workers start; GRADWATCH_LAUNCHER's by default (the fast tests pass a fake one: no processes)."""
    opened = store
    settings = settings or Settings.from_env()
    settings.ensure_token()  # auth is always on
    scrub_token_logs()
    sessions = Sessions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            private_dir(settings.data_dir)
            store = opened or Store(settings.data_dir / "gradwatch.sqlite3")
        except OSError as e:
            raise SettingsError(f"data dir {settings.data_dir} is not usable: {e}") from e
        except StoreError as e:
            raise SettingsError(str(e)) from None
        # Big reads run in worker threads (routes/runs.py). Between two bytecodes of numpy and
        # orjson work such a thread keeps the interpreter for the switch interval, 5 ms by
        # default, and on a busy machine those waits pile up into 50-200 ms pauses of the event
        # loop (bench/loop_stall.py); 1 ms keeps them to a few ms.
        sys.setswitchinterval(0.001)
        hub = Hub()
        jobs = JobManager(settings, store, hub, launcher if launcher is not None else make_launcher(settings))
        app.state.settings, app.state.store, app.state.hub, app.state.jobs = settings, store, hub, jobs
        await jobs.start()
        try:
            yield
        finally:
            await jobs.shutdown()
            store.close()

    # No /docs or /redoc: FastAPI's pages load their scripts from a public CDN, which would run in
    # this origin, where the session works. The schema is at /openapi.json (with the token).
    app = FastAPI(title="gradwatch", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Live per-layer training diagnostics. See docs/api.md.")
    app.state.settings, app.state.sessions = settings, sessions
    app.state.streams = {}  # identity -> its open /api/stream sockets (routes/stream.py)
    guarded = [Depends(require_token)]
    app.include_router(health.router)
    app.include_router(session.router)  # the sign-in is public; the rest check the token themselves
    app.include_router(runs.router, dependencies=guarded)
    app.include_router(groups.router, dependencies=guarded)
    app.include_router(presets.router, dependencies=guarded)
    app.include_router(stream.router)  # websockets check the token themselves, before accept()
    app.include_router(ingest.router)

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> Response:
        return await compressed(FileResponse(FRONTEND / "index.html", headers={"Cache-Control": "no-cache"}),
                                request.headers)

    # plotly.js is vendored in frontend/vendor/ (the version the page is measured with); gzipped.
    app.mount("/static", CompressedStaticFiles(directory=FRONTEND), name="static")
    app.add_middleware(Guard, settings=settings, sessions=sessions)  # Host, token, Origin, JSON-only, body size
    app.add_exception_handler(RequestValidationError, validation_error)

    async def store_error(request: Request, exc: Exception) -> JSONResponse:
        """A write the store could not make: say why (a full disk: 507), never a bare 500."""
        if disk_full(exc):
            detail = (f"the server's disk is full ({exc}): free space in {settings.data_dir}, or delete runs "
                      "(deletes use a reserve kept for them)")
            return JSONResponse({"detail": detail}, status_code=507)
        log.error("%s %s: the store failed: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": f"the store failed: {exc} (see /api/health)"}, status_code=503)

    app.add_exception_handler(sqlite3.Error, store_error)
    return app
