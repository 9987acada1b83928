"""Runs: create, list, inspect, stop, delete, and their columnar metrics history."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from ..deps import JobsDep, RunDep, SettingsDep, StoreDep
from ..schemas import Metrics, Run, RunCreate
from ..store import Store

router = APIRouter(prefix="/api/runs", tags=["runs"])


@router.post("", status_code=201, response_model=Run)
def create_run(body: RunCreate, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    if jobs.queued_count >= settings.max_queued:
        raise HTTPException(429, f"{jobs.queued_count} runs are already queued (limit {settings.max_queued}); "
                                 "wait for some to finish or stop them")
    run = jobs.create(body.name, body.config.model_dump())
    return jobs.view(run)


@router.get("", response_model=list[Run])
def list_runs(store: StoreDep, jobs: JobsDep) -> list[dict[str, Any]]:
    return [jobs.view(r) for r in store.list_runs()]


@router.get("/{run_id}", response_model=Run)
def get_run(run: RunDep, jobs: JobsDep) -> dict[str, Any]:
    return jobs.view(run)


@router.post("/{run_id}/stop", response_model=Run)
async def stop_run(run: RunDep, jobs: JobsDep) -> dict[str, Any]:
    return jobs.view(await jobs.stop(run["id"]))


@router.delete("/{run_id}", status_code=204)
async def delete_run(run: RunDep, jobs: JobsDep) -> Response:
    await jobs.delete(run["id"])
    return Response(status_code=204)


@router.get("/{run_id}/metrics", response_model=Metrics)
def run_metrics(
    run: RunDep,
    store: StoreDep,
    since: Annotated[int, Query(ge=0, description="only events with a larger seq")] = 0,
    max_points: Annotated[int, Query(ge=2, le=100_000, description="most steps returned")] = 2000,
) -> Response:
    # Serialised directly: validating 100k numbers through pydantic would cost more than the query.
    return Response(orjson.dumps(history(store, run, since, max_points)), media_type="application/json")


def pick(n: int, max_points: int) -> list[int]:
    """Indices of at most max_points evenly spaced items of n, the first and last always kept."""
    if n <= max_points:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})


def history(store: Store, run: dict[str, Any], since: int, max_points: int) -> dict[str, Any]:
    run_id = run["id"]
    seqs = store.metrics_seqs(run_id, since)
    chosen = [seqs[i] for i in pick(len(seqs), max_points)]
    rows = store.events_by_seq(run_id, chosen) if len(chosen) < len(seqs) else store.events(
        run_id, since, types=("metrics",))
    out: dict[str, Any] = {
        "run_id": run_id, "status": run["status"], "last_seq": run["last_seq"],
        "layers": run["layers"] or [],
        **{k: [e.get(k) for e in rows] for k in ("seq", "step", "time", "loss", "accuracy",
                                                   "global_grad_norm", "grad_norm", "weight_norm",
                                                   "update_ratio")},
    }
    val = store.val_points(run_id, since)
    out["val"] = {"step": [v[0] for v in val], "loss": [v[1] for v in val], "accuracy": [v[2] for v in val]}
    out["events"] = store.events(run_id, since, exclude=("metrics",))
    for e in out["events"]:
        e["run_id"] = run_id
    return out
