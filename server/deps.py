"""Typed dependency aliases: routes declare what they need, the lifespan provides it.

Routes and dependencies are `async def`: every write to the Store goes through its one writing
connection, on the event loop's thread (a sync route or dependency would run in the threadpool).
Big reads go to a worker thread on purpose, through routes/runs.py's `read_in_thread`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from .jobs import JobManager
from .settings import Settings
from .store import Store


async def get_store(request: Request) -> Store:
    return request.app.state.store


async def get_jobs(request: Request) -> JobManager:
    return request.app.state.jobs


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


StoreDep = Annotated[Store, Depends(get_store)]
JobsDep = Annotated[JobManager, Depends(get_jobs)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_run_or_404(run_id: str, store: StoreDep) -> dict[str, Any]:
    run = store.get_run(run_id)
    if run is None:
        raise HTTPException(404, f"run {run_id} not found")
    return run


RunDep = Annotated[dict[str, Any], Depends(get_run_or_404)]
