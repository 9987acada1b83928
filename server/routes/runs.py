"""Runs: create, list, inspect, stop, delete, and their columnar metrics history."""

from __future__ import annotations

import csv
import io
import math
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Query, Response

from trainer.config import ConfigError

from ..deps import JobsDep, RunDep, SettingsDep, StoreDep
from ..schemas import Metrics, Run, RunChange, RunCreate, RunCreated
from ..store import SERIES_LAYERS, STATS_LAYERS, Store

router = APIRouter(prefix="/api/runs", tags=["runs"])

# What the heatmap can show: every parameter's per-step statistics, then two of the hidden
# activations' (every stats_every steps). The page's menu lists the same, in
# frontend/js/state.js (HEATMAP_STATS); tests/test_frontend_static.py keeps them in step.
HEATMAP_STATS = (*SERIES_LAYERS, "act_std", "dead_frac")


@router.post("", status_code=201, response_model=RunCreated, response_model_exclude_unset=True)
async def create_run(body: RunCreate, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    if body.external:  # the caller's own loop (trainer.connect): nothing to queue or launch
        run = jobs.create(body.name, body.config_dict(), kind="external")
        return {**jobs.view(run), "token": run["token"]}  # the one answer that carries it
    if jobs.queued_count >= settings.max_queued:
        raise HTTPException(429, f"{jobs.queued_count} runs are already queued (limit {settings.max_queued}); "
                                 "wait for some to finish or stop them")
    try:
        config = body.config_dict()
    except ConfigError as e:  # a preset with overrides that do not fit together (e.g. too many parameters)
        raise HTTPException(422, [{"loc": ["body", "config", e.field], "msg": e.reason, "type": "value_error"}]) from e
    run = jobs.create(body.name or body.preset, config)
    return jobs.view(run)


@router.get("", response_model=list[Run])
async def list_runs(store: StoreDep, jobs: JobsDep) -> list[dict[str, Any]]:
    return [jobs.view(r) for r in store.list_runs()]


@router.get("/{run_id}", response_model=Run)
async def get_run(run: RunDep, jobs: JobsDep) -> dict[str, Any]:
    return jobs.view(run)


@router.post("/{run_id}/stop", response_model=Run)
async def stop_run(run: RunDep, jobs: JobsDep) -> dict[str, Any]:
    return jobs.view(await jobs.stop(run["id"]))


@router.delete("/{run_id}", status_code=204)
async def delete_run(run: RunDep, jobs: JobsDep) -> Response:
    await jobs.delete(run["id"])
    return Response(status_code=204)


@router.patch("/{run_id}", response_model=Run)
async def change_run(body: RunChange, run: RunDep, jobs: JobsDep) -> dict[str, Any]:
    """Change l2 / lr / grad_clip of a running run, applied before its next step."""
    changes = body.model_dump(exclude_unset=True)
    if not changes:
        raise HTTPException(422, [{"loc": ["body"], "msg": "give at least one of l2, lr, grad_clip",
                                   "type": "value_error"}])
    if run["status"] not in ("queued", "running", "stalled"):  # stalled: applied when its worker wakes
        raise HTTPException(409, f"run {run['id']} is {run['status']}; a finished run cannot change")
    if run["kind"] != "local":
        raise HTTPException(409, f"run {run['id']} is the user's own loop; change it in the script")
    await jobs.change(run["id"], changes)
    return jobs.view(jobs.store.get_run(run["id"]))


@router.get("/{run_id}/export")
async def export_run(
    run: RunDep,
    store: StoreDep,
    jobs: JobsDep,
    format: Annotated[Literal["csv", "json"], Query(description="csv: one row per step; json: everything")] = "json",
) -> Response:
    """Every stored series of a run, as a file download."""
    name = f"gradwatch-{run['id']}.{format}"
    headers = {"Content-Disposition": f'attachment; filename="{name}"'}
    if format == "json":
        body = {"run": jobs.view(run), "layers": run["layers"] or [],
                "metrics": history(store, run, 0, 10**9), "events": store.events(run["id"])}
        return Response(dumps(body), media_type="application/json", headers=headers)
    return Response(export_csv(store, run), media_type="text/csv", headers=headers)


def export_csv(store: Store, run: dict[str, Any]) -> str:
    cols = store.series(run["id"])
    names = [layer["name"] for layer in (run["layers"] or [])]
    val = {v[0]: v[1:] for v in store.val_points(run["id"])}
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["seq", "step", "time", "loss", "accuracy", "global_grad_norm", "val_loss", "val_accuracy"]
               + [f"{k}:{n}" for k in SERIES_LAYERS for n in names])
    for i, seq in enumerate(cols["seq"].tolist()):
        step = int(cols["step"][i])
        vl, va = val.get(step, (None, None))
        row = [seq, step, *(_cell(cols[k][i]) for k in ("time", "loss", "accuracy", "global_grad_norm")),
               _cell(vl), _cell(va)]
        for k in SERIES_LAYERS:
            row += [_cell32(v) for v in cols[k][i]]
        w.writerow(row)
    return buf.getvalue()


def _cell32(v: np.float32) -> str:
    """A stored float32 in its shortest form, as /metrics sends it."""
    return "" if np.isnan(v) else str(v)


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return repr(float(v))


@router.get("/{run_id}/heatmap")
async def run_heatmap(
    run: RunDep,
    store: StoreDep,
    stat: Annotated[Literal[HEATMAP_STATS], Query(
        description="a per-parameter statistic, or one of the activations' (every stats_every steps)")] = "grad_norm",
    max_points: Annotated[int, Query(ge=2, le=20_000, description="most step buckets")] = 500,
) -> Response:
    """Layer x step matrix, bucketed over steps with min and max per bucket: a one-step spike
    keeps its full value at any resolution (a mean would smear it away)."""
    if stat in STATS_LAYERS:  # per hidden activation, from the every-stats_every-steps statistics
        steps, values, names = store.stats_matrix(run["id"], stat)
        layers = [{"name": n, "module": "activation", "shape": []} for n in names["act_layers"]]
    else:
        cols = store.series(run["id"], columns=("step", stat))
        values, steps, layers = cols[stat], cols["step"], run["layers"] or []
    n = len(steps)
    if n == 0:
        body: dict[str, Any] = {"step_start": [], "step_end": [], "max": [], "min": []}
    else:
        starts = np.unique(np.linspace(0, n, num=min(n, max_points), endpoint=False).astype(np.int64))
        ends = np.append(starts[1:], n) - 1
        with np.errstate(all="ignore"):
            body = {"step_start": steps[starts].astype(int).tolist(), "step_end": steps[ends].astype(int).tolist(),
                    "max": np.fmax.reduceat(values, starts, axis=0),  # float32, sent as such (dumps)
                    "min": np.fmin.reduceat(values, starts, axis=0)}
    body.update(run_id=run["id"], stat=stat, layers=layers)
    return Response(dumps(body), media_type="application/json")


@router.get("/{run_id}/metrics", response_model=Metrics)
async def run_metrics(
    run: RunDep,
    store: StoreDep,
    since: Annotated[int, Query(ge=0, le=2**62, description="only events with a larger seq")] = 0,
    max_points: Annotated[int, Query(ge=2, le=100_000, description="most steps returned")] = 2000,
    stats: Annotated[str | None, Query(
        max_length=200, description="per-layer statistics in `stats`, comma-separated, of "
        f"{', '.join(STATS_LAYERS)} (default: all; empty: none)")] = None,
) -> Response:
    fields = STATS_LAYERS if stats is None else tuple(f for f in stats.split(",") if f)
    unknown = [f for f in fields if f not in STATS_LAYERS]
    if unknown:
        msg = f"unknown statistic {unknown[0]!r}; expected some of {', '.join(STATS_LAYERS)}"
        raise HTTPException(422, [{"loc": ["query", "stats"], "type": "value_error", "msg": msg}])
    # Serialised directly: validating 100k numbers through pydantic would cost more than the query.
    return Response(dumps(history(store, run, since, max_points, fields)), media_type="application/json")


def dumps(body: dict[str, Any]) -> bytes:
    """JSON with numpy arrays as they are: float32 values in their shortest float32 form (about
    half the characters of the float64 one), NaN/inf as null."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def pick(n: int, max_points: int) -> list[int]:
    """Indices of at most max_points evenly spaced items of n, the first and last always kept."""
    if n <= max_points:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_points - 1)) for i in range(max_points)})


def history(store: Store, run: dict[str, Any], since: int, max_points: int,
            stats: tuple[str, ...] = STATS_LAYERS) -> dict[str, Any]:
    run_id = run["id"]
    seqs = store.series_seqs(run_id, since)
    chosen = [seqs[i] for i in pick(len(seqs), max_points)]
    cols = store.series(run_id, since) if len(chosen) == len(seqs) else store.series(run_id, seqs=chosen)
    out: dict[str, Any] = {"run_id": run_id, "status": run["status"], "last_seq": run["last_seq"],
                           "layers": run["layers"] or []}
    for name, arr in cols.items():  # per-layer (T, L) float32 stay numpy (see dumps)
        out[name] = arr if name in SERIES_LAYERS else arr.tolist()  # NaN/inf come out as null
    out["step"] = [int(s) for s in out["step"]]
    stats_seqs = store.stats_seqs(run_id, since)
    out["stats"] = store.layer_stats(run_id, [stats_seqs[i] for i in pick(len(stats_seqs), max_points)], stats)
    val = store.val_points(run_id, since)
    out["val"] = {"step": [v[0] for v in val], "loss": [v[1] for v in val], "accuracy": [v[2] for v in val]}
    out["events"] = store.events(run_id, since, exclude=("metrics",))
    for e in out["events"]:
        e["run_id"] = run_id
    return out
