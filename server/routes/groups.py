"""Ablation groups: the Cartesian product of varied RunConfig fields x seeds, as runs of one
group, queued under the concurrency limit like any other run."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import fields
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException
from gradwatch.config import ConfigError, RunConfig
from gradwatch.presets import PRESETS, resolve
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from ..deps import JobsDep, SettingsDep, StoreDep
from ..jobs import JobManager
from ..schemas import RunConfigIn, check_variant, preset_record, variant_config
from ..store import Store
from .runs import keep_preset

router = APIRouter(prefix="/api/groups", tags=["groups"])

MAX_GROUP_RUNS = 64  # one click should not queue a day of compute
CONFIG_FIELDS = {f.name for f in fields(RunConfig)}


class GroupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)] = "ablation"
    base: RunConfigIn = Field(default_factory=RunConfigIn)  # type: ignore[valid-type]
    vary: dict[str, Annotated[list[Any], Field(min_length=1, max_length=MAX_GROUP_RUNS)]] = Field(
        default_factory=dict, description="RunConfig field -> the values to try")
    seeds: Annotated[list[Annotated[int, Field(ge=0, le=2**31 - 1)]], Field(min_length=1, max_length=16)] | None = None
    # A group started from a preset (and variant): `base` holds only the fields that differ from
    # them, as POST /api/runs's `config` does. Every cell keeps the preset's name, and the name of
    # the variant it is (if one of them matches it).
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    variant: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    @field_validator("variant")
    @classmethod
    def _variant_of_the_preset(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_variant(info.data.get("preset"), value)
        return value

    def base_config(self) -> dict[str, Any]:
        """The cells' common config: the preset, its variant, then the fields given in `base`."""
        if self.preset is None:
            return self.base.model_dump()
        given = self.base.model_dump(include=self.base.model_fields_set)
        try:
            return resolve(self.preset, {**variant_config(self.preset, self.variant), **given}).to_dict()
        except ConfigError as e:
            raise _error(["base", e.field], e.reason) from e


def _error(loc: list[Any], msg: str) -> HTTPException:
    return HTTPException(422, [{"loc": ["body", *loc], "msg": msg, "type": "value_error"}])


def expand(body: GroupCreate) -> list[tuple[str, dict[str, Any]]]:
    """(run name, config) for every cell x seed; 422 naming the field on anything wrong."""
    base = body.base_config()
    for field in body.vary:
        if field not in CONFIG_FIELDS:
            raise _error(["vary", field], f"unknown RunConfig field {field!r}")
        if field == "seed" and body.seeds:
            raise _error(["vary", "seed"], "give seeds either in vary or in seeds, not both")
    axes = list(body.vary.items())
    seeds = body.seeds or [base["seed"]]
    size = len(seeds)
    for _, values in axes:
        size *= len(values)
    if size > MAX_GROUP_RUNS:
        raise _error(["vary"], f"the product is {size} runs; at most {MAX_GROUP_RUNS} per group")
    out = []
    for combo in itertools.product(*(values for _, values in axes)):
        for seed in seeds:
            cfg = {**base, **{f: v for (f, _), v in zip(axes, combo, strict=True)}}
            if body.seeds:
                cfg["seed"] = seed
            try:
                cfg = RunConfigIn(**cfg).model_dump()
            except ValidationError as e:
                err = e.errors()[0]
                field = err["loc"][0] if err["loc"] else "vary"
                raise _error(["vary", field], f"{err['msg']} (value {err.get('input')!r})") from None
            label = " ".join(f"{f}={_short(v)}" for (f, _), v in zip(axes, combo, strict=True))
            if body.seeds:
                label += f" seed={seed}"
            out.append((label.strip() or body.name, cfg))
    return out


def _short(v: Any) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)


@router.post("", status_code=201)
async def create_group(body: GroupCreate, jobs: JobsDep, store: StoreDep, settings: SettingsDep) -> dict[str, Any]:
    cells = expand(body)
    if jobs.queued_count + len(cells) > settings.max_queued:
        raise HTTPException(429, f"{len(cells)} more runs would pass the queue limit of {settings.max_queued}")
    group_id = secrets.token_hex(4)
    spec = {"base": body.base_config(), "vary": body.vary, "seeds": body.seeds,
            "preset": body.preset and {"name": body.preset, "variant": body.variant}}
    store.create_group(group_id, body.name, spec)
    for label, cfg in cells:
        run = jobs.create(f"{body.name}: {label}", cfg, group_id=group_id)
        if body.preset is not None:
            keep_preset(jobs, run, preset_record(body.preset, cell_variant(body.preset, cfg), cfg))
    return group_view(group_id, store, jobs)


def cell_variant(preset: str, cfg: dict[str, Any]) -> str | None:
    """The preset's variant a cell is, if any: the first that agrees with it on every field the
    preset's variants set (an explosion BN x L2 group's BN-on, L2-0 cell is `bn`; its L2-0.01
    cells are none of them)."""
    variants = PRESETS[preset].variants
    defining = {f for v in variants for f in v.config}
    for v in variants:
        want = resolve(preset, v.config).to_dict()
        if all(cfg.get(f) == want[f] for f in defining):
            return v.name
    return None


@router.get("")
async def list_groups(store: StoreDep) -> list[dict[str, Any]]:
    return store.list_groups()


@router.get("/{group_id}")
async def get_group(group_id: str, store: StoreDep, jobs: JobsDep) -> dict[str, Any]:
    return group_view(group_id, store, jobs)


def group_view(group_id: str, store: Store, jobs: JobManager) -> dict[str, Any]:
    group = store.get_group(group_id)
    if group is None:
        raise HTTPException(404, f"group {group_id} not found")
    runs = [jobs.view(r) for r in reversed(store.list_runs(group_id=group_id))]
    cells = []
    for r in runs:
        val = [v[2] for v in store.val_points(r["id"]) if v[2] is not None]
        s = r["summary"] or {}
        cells.append({
            "run_id": r["id"], "name": r["name"], "status": r["status"],
            "values": {f: r["config"][f] for f in [*group["vary"], *(["seed"] if group["seeds"] else [])]},
            "diverged_step": s.get("diverged_step"), "final_loss": s.get("loss"),
            "best_val_accuracy": max(val) if val else None, "step": s.get("step"),
            "alerts": s.get("alerts"), "val_accuracy": s.get("val_accuracy"),
        })
    return {**group, "runs": runs, "cells": cells}
