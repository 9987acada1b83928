from __future__ import annotations

from fastapi import APIRouter
from gradwatch.stats import REGISTRY

from .. import __version__
from ..deps import JobsDep
from ..lifecycle import ACTIVE, ALL, LIVE, TERMINAL, TRANSITIONS
from ..schemas import Health, RunConfigIn

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health", response_model=Health)
async def health(jobs: JobsDep) -> dict:
    # From memory only, never the store. A run with a worker process of ours is usually connected
    # too: count each run once.
    active = jobs.active_count
    return {"status": "ok", "version": __version__, "runs_active": active,
            "runs_queued": jobs.queued_count, "integrity": jobs.store.integrity,
            "writes": jobs.store.write_error or "ok"}


@router.get("/statuses")
async def statuses() -> dict:
    """The run statuses, defined once (server/lifecycle.py): every one, those a run may still leave
    (active: Stop is offered), those whose worker may be training (live), the final ones, and
    every move with who makes it. The page reads its sets from here."""
    return {"all": list(ALL), "active": list(ACTIVE), "live": list(LIVE),
            "terminal": [s for s in ALL if s in TERMINAL],
            "transitions": [{"from": f.value, "to": t.value, "by": by} for (f, t), by in TRANSITIONS.items()]}


@router.get("/stats")
async def stats() -> list[dict]:
    """The per-layer statistics, defined once (gradwatch.stats): each one's name, cadence (`step`:
    every step; `stats`: every stats_every steps), what it is per (parameter, activation, bn),
    titles, unit, description, log or linear, whether the heatmap offers it, whether it has a
    column, and the line chart taken over its layers, if any. The page reads them from here."""
    return [s.as_dict() for s in REGISTRY]


@router.get("/config-schema")
async def config_schema() -> dict:
    """RunConfig's JSON schema (gradwatch.config, through server/schemas.py): every field in order,
    its type, default, description, bounds (minimum/maximum) and options (enum). The page builds
    its launch form from it (frontend/js/form.js)."""
    return RunConfigIn.model_json_schema()
