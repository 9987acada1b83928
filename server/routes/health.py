from __future__ import annotations

from fastapi import APIRouter

from .. import __version__
from ..deps import JobsDep
from ..schemas import Health

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health)
async def health(jobs: JobsDep) -> dict:
    # From memory only, never the store. A run with a worker process of ours is usually connected
    # too: count each run once.
    active = len(jobs.procs.keys() | jobs.conns.keys() | jobs.adopted)
    return {"status": "ok", "version": __version__, "runs_active": active,
            "runs_queued": jobs.queued_count, "integrity": jobs.store.integrity,
            "writes": jobs.store.write_error or "ok"}
