"""create_app(settings): the FastAPI app. The lifespan owns the Store, Hub and JobManager;
nothing heavy happens at import time."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import plotly
from fastapi import Depends, FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from . import __version__
from .hub import Hub
from .jobs import JobManager
from .middleware import Guard, scrub_token_logs, validation_error
from .routes import groups, health, ingest, presets, runs, stream
from .security import require_token
from .settings import Settings, SettingsError
from .store import Store

FRONTEND = Path(__file__).resolve().parent.parent / "frontend"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.from_env()
    settings.ensure_token()  # auth is always on
    scrub_token_logs()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            store = Store(settings.data_dir / "gradwatch.sqlite3")
        except OSError as e:
            raise SettingsError(f"data dir {settings.data_dir} is not usable: {e}") from e
        # Big reads run in worker threads (routes/runs.py). Between two bytecodes of numpy and
        # orjson work such a thread keeps the interpreter for the switch interval, 5 ms by
        # default, and on a busy machine those waits pile up into 50-200 ms pauses of the event
        # loop (bench/loop_stall.py); 1 ms keeps them to a few ms.
        sys.setswitchinterval(0.001)
        hub = Hub()
        jobs = JobManager(settings, store, hub)
        app.state.settings, app.state.store, app.state.hub, app.state.jobs = settings, store, hub, jobs
        await jobs.start()
        try:
            yield
        finally:
            await jobs.shutdown()
            store.close()

    app = FastAPI(title="gradwatch", version=__version__, lifespan=lifespan,
                  description="Live per-layer training diagnostics. See docs/api.md.")
    app.state.settings = settings
    guarded = [Depends(require_token)]
    app.include_router(health.router)
    app.include_router(runs.router, dependencies=guarded)
    app.include_router(groups.router, dependencies=guarded)
    app.include_router(presets.router, dependencies=guarded)
    app.include_router(stream.router)  # websockets check the token themselves, before accept()
    app.include_router(ingest.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(FRONTEND / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=FRONTEND), name="static")
    app.add_middleware(Guard, settings=settings)  # Host, token, Origin, JSON-only, body size
    app.add_exception_handler(RequestValidationError, validation_error)
    return app
