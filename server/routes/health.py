from __future__ import annotations

from fastapi import APIRouter

from .. import __version__
from ..deps import JobsDep
from ..schemas import Health

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health)
async def health(jobs: JobsDep) -> dict:
    return {"status": "ok", "version": __version__, "runs_active": len(jobs.procs) + len(jobs.conns),
            "runs_queued": jobs.queued_count, "integrity": jobs.store.integrity}
