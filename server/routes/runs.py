"""Runs: create, list, inspect, stop, delete, and their columnar metrics history."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

import numpy as np
import orjson
from fastapi import APIRouter, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from gradwatch import checkpoint
from gradwatch.config import ConfigError
from gradwatch.stats import BY_NAME, HEATMAP

from .. import forks
from ..columns import SERIES_FIRST
from ..deps import JobsDep, RunDep, SettingsDep, StoreDep
from ..jobs import JobManager
from ..schemas import ForkCreate, Metrics, Run, RunChange, RunCreate, RunCreated, preset_record
from ..store import SERIES_ADDED, SERIES_LAYERS, STATS_LAYERS, Store

router = APIRouter(prefix="/api/runs", tags=["runs"])
T = TypeVar("T")

# What the heatmap can show: the registry's statistics marked `heatmap` (gradwatch.stats), per
# parameter every step or per hidden activation every stats_every steps. The page's menu is built
# from the same list (GET /api/stats).
HEATMAP_STATS = HEATMAP


@router.post("", status_code=201, response_model=RunCreated, response_model_exclude_unset=True)
async def create_run(body: RunCreate, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    if body.external:  # the caller's own loop (gradwatch.connect): nothing to queue or launch
        live = sum(r["kind"] == "external" for r in jobs.store.list_runs(statuses=("running", "stalled")))
        if live >= settings.max_external:  # a script that loops on connect() should not fill the list
            raise HTTPException(429, f"{live} of your own training loops are already live (limit "
                                     f"{settings.max_external}, GRADWATCH_MAX_EXTERNAL); finish or stop some")
        run = jobs.create(body.name, body.config_dict(), kind="external")
        return {**jobs.view(run), "token": run["token"]}  # the one answer that carries it
    if jobs.queued_count >= settings.max_queued:
        raise HTTPException(429, f"{jobs.queued_count} runs are already queued (limit {settings.max_queued}); "
                                 "wait for some to finish or stop them")
    try:
        config = body.config_dict()
    except ConfigError as e:  # a preset with overrides that do not fit together (e.g. too many parameters)
        raise HTTPException(422, [{"loc": ["body", "config", e.field], "msg": e.reason, "type": "value_error"}]) from e
    name = body.name or (f"{body.preset} {body.variant}" if body.variant else body.preset)
    run = jobs.create(name, config)
    return jobs.view(keep_preset(jobs, run, preset_record(body.preset, body.variant, config)))


def keep_preset(jobs: JobManager, run: dict[str, Any], preset: dict[str, Any] | None) -> dict[str, Any]:
    """Note on a new run the preset (and variant) it was started from, and tell the pages again
    (the first run.update went out from jobs.create, without it). Returns the run as stored."""
    if preset is None:
        return run
    jobs.store.update_run(run["id"], preset=preset)
    run = jobs.store.get_run(run["id"])
    jobs.lifecycle.publish(run)  # the record changed
    return run


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
async def delete_run(run: RunDep, jobs: JobsDep, settings: SettingsDep) -> Response:
    await jobs.delete(run["id"])
    forks.remove(settings, run["id"])  # its checkpoints
    return Response(status_code=204)


@router.post("/{run_id}/fork", status_code=201, response_model=Run)
async def fork_run(body: ForkCreate, run: RunDep, jobs: JobsDep, settings: SettingsDep) -> dict[str, Any]:
    """A new run from the run's newest checkpoint at or before `step`, with `changes` (server/forks.py)."""
    try:
        config = forks.fork_config(run, body.changes)
        step = forks.choose(settings, run, body.step, getattr(jobs.launcher, "name", "local"))
        path = checkpoint.path_for(forks.checkpoint_dir(settings, run["id"]), step)
        try:
            await run_in_threadpool(checkpoint.verify, path)  # length and digest; the worker checks again
        except checkpoint.CheckpointError as e:
            raise forks.ForkRefused(409, f"run {run['id']}: {e}; fork from another step") from None
        if config["steps"] < step:
            raise forks.ForkRefused(422, f"the fork starts at step {step}: steps must be at least that", "steps")
        if jobs.queued_count >= settings.max_queued:
            raise HTTPException(429, f"{jobs.queued_count} runs are already queued (limit {settings.max_queued})")
        changed = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in body.changes.items())
        name = body.name or f"{run['name']} @{step}" + (f" {changed}" if changed else "")
        record = {"parent": run["id"], "step": step, "asked": body.step, "changes": body.changes}
        # No await from here to the end: the scheduler cannot launch the fork before its record is in.
        new = jobs.create(name, config)  # not in the parent's group: a group's cells are its own grid
        try:
            forks.adopt(settings, run["id"], step, new["id"])
        except forks.ForkRefused:
            await jobs.delete(new["id"])
            forks.remove(settings, new["id"])
            raise
    except forks.ForkRefused as e:
        if e.status == 422:
            raise HTTPException(422, [{"loc": ["body", "changes", e.field], "msg": e.message,
                                       "type": "value_error"}]) from None
        raise HTTPException(e.status, e.message) from None
    jobs.store.update_run(new["id"], durable=True, fork=record)
    new = jobs.store.get_run(new["id"])
    jobs.lifecycle.publish(new)  # as keep_preset does: the record changed
    return jobs.view(new)


@router.get("/{run_id}/checkpoints")
async def run_checkpoints(run: RunDep, settings: SettingsDep) -> dict[str, Any]:
    """The steps a fork of this run can start from (its checkpoints, newest last)."""
    return {"run_id": run["id"], "steps": checkpoint.steps(forks.checkpoint_dir(settings, run["id"])),
            "fields": list(checkpoint.FORK_FIELDS)}


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
        view = jobs.view(run)
        body = await read_in_thread(store, run["id"], lambda r: dumps(
            {"run": view, "layers": r["layers"] or [], "metrics": history(store, r, 0, 10**9),
             "events": store.events(r["id"])}))
        return Response(body, media_type="application/json", headers=headers)
    pieces = await read_in_thread(store, run["id"], lambda r: export_csv(store, r))
    return StreamingResponse(iter(pieces), media_type="text/csv", headers=headers)


async def read_in_thread(store: Store, run_id: str, read: Callable[[dict[str, Any]], T]) -> T:
    """`read(run)` in a worker thread, within one snapshot of the store, given the run as that
    snapshot has it: a long history or an export must not hold up the event loop (live streams,
    every worker's ingest) for the time it takes."""
    def job() -> T:
        with store.snapshot():
            run = store.get_run(run_id)
            if run is None:  # deleted since the request came in
                raise HTTPException(404, f"run {run_id} not found")
            return read(run)
    return await run_in_threadpool(job)


def export_csv(store: Store, run: dict[str, Any]) -> list[bytes]:
    """The CSV file in pieces of CSV_ROWS rows (a worker thread makes them; between two pieces the
    event loop gets the interpreter back, and the pieces are sent as they are)."""
    cols = store.series(run["id"])
    names = [layer["name"] for layer in (run["layers"] or [])]
    val = {v[0]: v[1:] for v in store.val_points(run["id"])}
    present = [k for k in SERIES_LAYERS if k in SERIES_FIRST or cols[k].shape[1]]  # a statistic it sent
    head = io.StringIO()
    csv.writer(head).writerow(["seq", "step", "time", "loss", "accuracy", "global_grad_norm", "val_loss",
                               "val_accuracy"] + [f"{k}:{n}" for k in present for n in names])
    out = [head.getvalue().encode()]
    per_layer = np.hstack([cols[k] for k in present])
    scalars = [cols[k].tolist() for k in ("seq", "step", "time", "loss", "accuracy", "global_grad_norm")]
    for start in range(0, len(scalars[0]), CSV_ROWS):
        lines = []
        for i, cells in enumerate(_csv_cells32(per_layer[start : start + CSV_ROWS]), start=start):
            seq, step, *rest = (c[i] for c in scalars)
            vl, va = val.get(int(step), (None, None))
            row = [str(seq), str(int(step)), *(_cell(c) for c in rest), _cell(vl), _cell(va)]
            lines.append(",".join(row) + ("," + cells if cells is not None else "") + "\r\n")
        out.append("".join(lines).encode())
    return out


CSV_ROWS = 256


def _csv_cells32(m: np.ndarray) -> list[str | None]:
    """Each row of a (T, K) float32 matrix as CSV cells, every value in its shortest float32 form
    (as /metrics sends it), NaN as an empty cell; None for a row of no cells. orjson writes the
    matrix (a 20k-step, 150-column export: 0.4 s, where a Python loop took 4.2 s); the few
    rows with an infinity, which JSON cannot hold, are written one cell at a time."""
    if m.shape[1] == 0:
        return [None] * m.shape[0]
    text = orjson.dumps(m, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    rows = text[2:-2].replace("null", "").split("],[") if m.shape[0] else []
    for i in np.flatnonzero(np.isinf(m).any(axis=1)).tolist():
        rows[i] = ",".join(_cell32(v) for v in m[i])
    return rows


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
    body = await read_in_thread(store, run["id"], lambda r: dumps(heatmap(store, r, stat, max_points)))
    return Response(body, media_type="application/json")


def heatmap(store: Store, run: dict[str, Any], stat: str, max_points: int) -> dict[str, Any]:
    if stat in STATS_LAYERS:  # per hidden activation or BatchNorm, from the every-stats_every-steps statistics
        steps, values, names = store.stats_matrix(run["id"], stat)
        per = BY_NAME[stat].per  # what a row is (the registry's): an activation, or a BatchNorm layer
        layers = [{"name": n, "module": per, "shape": []} for n in names["act_layers" if per == "activation" else
                                                                            "bn_layers"]]
    else:
        cols = store.series(run["id"], columns=("step", stat))
        values, steps, layers = cols[stat], cols["step"], run["layers"] or []
        if len(steps) and not values.shape[1]:  # a statistic this run never sent: no layers to show
            layers = []
    n = len(steps)
    if n == 0:
        body: dict[str, Any] = {"step_start": [], "step_end": [], "max": [], "min": []}
    else:
        starts = np.unique(np.linspace(0, n, num=min(n, max_points), endpoint=False).astype(np.int64))
        ends = np.append(starts[1:], n) - 1
        body = {"step_start": steps[starts].astype(int).tolist(), "step_end": steps[ends].astype(int).tolist(),
                "max": _buckets(np.fmax, values, starts),  # float32, sent as such (dumps)
                "min": _buckets(np.fmin, values, starts)}
    body.update(run_id=run["id"], stat=stat, layers=layers)
    return body


def _buckets(ufunc: np.ufunc, values: np.ndarray, starts: np.ndarray, rows: int = 8192) -> np.ndarray:
    """`ufunc.reduceat(values, starts, axis=0)`, a few thousand rows per call: numpy keeps the
    interpreter for a whole call (~15 ms for 100k x 50), and a worker thread should hand it back
    to the event loop often."""
    out = np.empty((len(starts), values.shape[1]), dtype=values.dtype)
    n, i = len(values), 0
    with np.errstate(all="ignore"):
        while i < len(starts):
            j = max(i + 1, int(np.searchsorted(starts, starts[i] + rows)))
            end = starts[j] if j < len(starts) else n
            out[i:j] = ufunc.reduceat(values[starts[i] : end], starts[i:j] - starts[i], axis=0)
            i = j
    return out


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
    body = await read_in_thread(store, run["id"], lambda r: dumps(history(store, r, since, max_points, fields)))
    return Response(body, media_type="application/json")


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
        if name in SERIES_ADDED and not np.isfinite(arr).any():
            continue  # a field this run never sent (its learning rate, before the probe sent one): left out
        if name in SERIES_LAYERS and name not in SERIES_FIRST and not arr.shape[1]:
            continue  # a statistic added to the registry since this run's steps were sent: left out
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
