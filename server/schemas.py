"""Request/response models. The RunConfig model is generated from gradwatch.config (fields,
defaults, options, bounds, descriptions), so the API, the CLI, the page's form (built from
GET /api/config-schema, this model's JSON schema) and the trainer validate from one source.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Annotated, Any, Literal

import orjson
from gradwatch.config import CHOICES, DESCRIPTIONS, KINDS, LIMITS, LIVE_FIELDS, RunConfig
from gradwatch.presets import PRESETS, resolve
from gradwatch.stats import BY_NAME, STORED_STATS, STORED_STEP
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    create_model,
    field_validator,
)

from .lifecycle import Status

_PY = {"bool": bool, "int": int, "float": float, "str": str}


def _field_type(name: str) -> Any:
    """A RunConfig field as pydantic's: its options or type, bounds and description."""
    kind = KINDS[name]
    base = Literal[CHOICES[name]] if name in CHOICES else _PY[kind]  # type: ignore[valid-type]
    if kind == "float":
        base = Annotated[float, Field(allow_inf_nan=False)]
    if name in LIMITS:
        lo, hi = LIMITS[name]
        base = Annotated[base, Field(ge=lo, le=hi)]
    return Annotated[base, Field(description=DESCRIPTIONS[name])]


def _config_model() -> type[BaseModel]:
    spec = {f.name: (_field_type(f.name), f.default) for f in fields(RunConfig)}
    return create_model(
        "RunConfigIn",
        __config__=ConfigDict(extra="forbid", strict=True),
        **spec,
    )


RunConfigIn = _config_model()


MAX_EXTERNAL_CONFIG = 16 * 1024  # bytes of JSON an external run's free-form config may take


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    # True: the caller's own loop streams into this run (gradwatch.connect); nothing is launched,
    # and `config` is the caller's own description of it. Declared before `config`, which reads it.
    external: bool = False
    # A preset (trainer/presets.py) fills the config, then its variant's fields, then the fields
    # given in `config` override both. The run keeps both names (its `preset` record).
    preset: Literal[tuple(PRESETS)] | None = None  # type: ignore[valid-type]
    variant: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    config: RunConfigIn = Field(default_factory=RunConfigIn)  # type: ignore[valid-type]

    @field_validator("preset")
    @classmethod
    def _no_preset_for_external_runs(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("external") is True:
            raise ValueError("an external run trains its own model: it takes no preset")
        return value

    @field_validator("variant")
    @classmethod
    def _variant_of_the_preset(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            check_variant(info.data.get("preset"), value)
        return value

    @field_validator("config", mode="wrap")
    @classmethod
    def _external_config_is_free_form(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                                      info: ValidationInfo) -> Any:
        """An external run's config is any small JSON object, shown in the dashboard and never
        interpreted; every other run's is a RunConfig, checked field by field."""
        if info.data.get("external") is not True:
            return handler(value)
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ValueError("an external run's config must be a JSON object")
        try:
            size = len(orjson.dumps(value))
        except TypeError as e:  # a lone surrogate, an integer past 64 bits: not storable JSON
            raise ValueError(f"an external run's config must be plain JSON: {e}") from None
        if size > MAX_EXTERNAL_CONFIG:
            raise ValueError(f"an external run's config must be at most {MAX_EXTERNAL_CONFIG} bytes of JSON")
        return value

    def config_dict(self) -> dict[str, Any]:
        """What the run stores: every RunConfig field, or an external run's object as given."""
        if self.external:
            return self.config if isinstance(self.config, dict) else {}
        if self.preset is not None:  # the preset, its variant, then only the fields the caller gave
            given = self.config.model_dump(include=self.config.model_fields_set)
            return resolve(self.preset, {**variant_config(self.preset, self.variant), **given}).to_dict()
        # Field by field it is valid (pydantic); RunConfig also checks the whole (parameter budget).
        return RunConfig.from_dict(self.config.model_dump()).to_dict()


def check_variant(preset: str | None, variant: str) -> None:
    """A variant names one of its preset's variants (ValueError otherwise: pydantic's 422)."""
    if preset is None:
        raise ValueError("a variant needs its preset: give `preset` too")
    names = [v.name for v in PRESETS[preset].variants]
    if variant not in names:
        raise ValueError(f"preset {preset!r} has no variant {variant!r}; expected one of {', '.join(names)}")


def variant_config(preset: str, variant: str | None) -> dict[str, Any]:
    """The fields a variant changes over its preset ({} for none)."""
    return next((v.config for v in PRESETS[preset].variants if v.name == variant), {})


def preset_record(preset: str | None, variant: str | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """What a run started from a preset keeps (its `preset` field): the preset's and the variant's
    names, and the fields of its config that differ from what they give (the person's changes),
    so the page can say "explosion · plain (steps changed)"."""
    if preset is None:
        return None
    base = resolve(preset, variant_config(preset, variant)).to_dict()
    changed = sorted(k for k, v in config.items() if base.get(k) != v)
    return {"name": preset, "variant": variant, "changed": changed}


def _live_model() -> type[BaseModel]:
    # Each field may be left out, never null: `{"lr": null}` is a 422, not a change to nothing
    # (which a queued run would keep in its config and fail on at launch). The default None is
    # what "left out" looks like; pydantic does not validate defaults.
    spec = {name: (_field_type(name), None) for name in LIVE_FIELDS}
    return create_model("RunChange", __config__=ConfigDict(extra="forbid", strict=True), **spec)


RunChange = _live_model()


class ForkCreate(BaseModel):
    """POST /api/runs/{id}/fork: from the newest checkpoint at or before `step`, with `changes`
    (fields a fork may change: server/forks.py; each checked there, a 422 naming the field)."""

    model_config = ConfigDict(extra="forbid")
    step: Annotated[int, Field(ge=1, le=1_000_000, strict=True)]
    changes: dict[str, Any] = Field(default_factory=dict, max_length=32)
    name: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class Run(BaseModel):
    id: str
    name: str
    status: Status = Field(description="server/lifecycle.py: the statuses and who moves a run between them")
    config: dict[str, Any]
    created: float
    started: float | None
    finished: float | None
    error: str | None
    last_seq: int
    kind: str
    group_id: str | None
    summary: dict[str, Any]
    preset: dict[str, Any] | None = Field(None, description="a run started from a preset: {name, variant "
                                          "(or null), changed (the config fields set apart from them)}")
    fork: dict[str, Any] | None = Field(None, description="a fork: {parent (run id), step (its first step: "
                                        "the checkpoint's), asked (the step asked for), changes}")
    gpu: str | None = Field(None, description="the GPU its worker was given (CUDA_VISIBLE_DEVICES), "
                            "while it runs on a machine with several")
    node: str | None = Field(None, description="where its worker runs, while it runs: `local`, or the "
                             "cluster node the launcher placed it on")
    waiting: str | None = Field(None, description="a queued run launched on a cluster that has no room for it yet: "
                                "what it waits for (\"waiting for 1 GPU and 1 CPU on the Ray cluster\")")
    idle_s: float | None = Field(None, description="a running run with no new step for GRADWATCH_IDLE_NOTE_S "
                                 "(30 s): the seconds since its last step (or since its worker connected)")


class RunCreated(Run):
    # Only in the answer to creating an external run: its loop needs it to connect to ingest.
    token: str | None = Field(None, description="external runs only: the run's ingest token")


class Layer(BaseModel):
    name: str
    module: str
    shape: list[int]


class _LayerStatsBase(BaseModel):
    """The every-stats_every-steps statistics (steps 1, stats_every, 2·stats_every, …), columnar."""

    step: list[int]
    act_layers: list[str] = Field(description="hidden activation modules, in forward order")
    bn_layers: list[str]
    bn_feeds: list[str | None] = Field(description="the weight feeding each BatchNorm")


_PER_LAYER = list[list[float | None]]  # (steps, layers)

# The per-layer statistics come from the registry (gradwatch.stats). Each of LayerStats' only
# when asked for (`stats=`; all by default), and one the run never sent is left out.
LayerStats = create_model(
    "LayerStats", __base__=_LayerStatsBase,
    **{k: (_PER_LAYER | None, Field(None, description=f"per {BY_NAME[k].per}: {BY_NAME[k].description}"))
       for k in STORED_STATS})


class _MetricsBase(BaseModel):
    run_id: str
    status: str
    last_seq: int
    layers: list[Layer]
    seq: list[int]
    step: list[int]
    time: list[float]
    loss: list[float | None]
    accuracy: list[float | None]
    global_grad_norm: list[float | None]
    lr: list[float | None] | None = Field(
        None, description="each step's learning rate; absent when the run never reported one")
    val: dict[str, list[float | None]]
    stats: LayerStats  # type: ignore[valid-type]
    events: list[dict[str, Any]]


# Every-step per-parameter statistics (the registry's): grad_norm, weight_norm and update_ratio
# in every answer; one added since, absent for a run that never sent it.
Metrics = create_model(
    "Metrics", __base__=_MetricsBase,
    **{k: (_PER_LAYER, Field(description=BY_NAME[k].description)) if k in ("grad_norm", "weight_norm", "update_ratio")
       else (_PER_LAYER | None, Field(None, description=f"{BY_NAME[k].description}; absent when the run never sent it"))
       for k in STORED_STEP})


class Health(BaseModel):
    status: str
    version: str
    runs_active: int
    runs_queued: int
    integrity: str  # "ok": PRAGMA quick_check passed at start and no write has found damage since
    writes: str  # "ok", or why the store's last write failed ("disk full: …") until one succeeds
