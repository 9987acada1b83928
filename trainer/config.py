"""RunConfig: every knob of a training run, one flat dataclass, validated in one place.

The field names are the API: the REST body's `config`, the CLI flags and the form all use
them. Bounds and choices live in LIMITS / CHOICES beside the dataclass so the server can
build its request schema from the same source (server/schemas.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class RunConfig:
    dataset: str = "digits"  # digits (offline, bundled with scikit-learn) | synthetic | mnist | fashion_mnist | cifar10
    model: str = "mlp"  # mlp | cnn
    depth: int = 4  # hidden blocks (Linear or Conv, then BN if on, then activation)
    width: int = 64  # units per hidden layer (mlp) or channels (cnn)
    activation: str = "relu"  # relu | tanh
    batchnorm: bool = False  # BatchNorm after every hidden Linear/Conv, before the activation
    l2: float = 0.0  # weight decay on Linear/Conv weights (not biases, not BN); 0 turns L2 off
    dropout: float = 0.0  # dropout probability after each hidden activation; 0 = off
    init: str = "default"  # default (PyTorch's) | kaiming | xavier | normal
    init_std: float = 0.05  # standard deviation of init="normal"
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.05  # learning rate
    momentum: float = 0.9  # SGD momentum (ignored by adam/adamw)
    grad_clip: float = 0.0  # clip the global gradient norm to this; 0 = off
    batch_size: int = 64  # examples per step
    steps: int = 500  # optimizer steps in the run
    eval_every: int = 50  # steps between validation passes; 0 = only at the end
    seed: int = 0  # seeds init and data order: same seed => same data order
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    stats_every: int = 10  # steps between the costlier statistics (activations, BN drift)
    alert_factor: float = 10.0  # alert when the global grad norm exceeds this x its running median
    amp: bool = False  # bf16 autocast on CUDA (ignored on the CPU)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """Build and validate from a plain dict; unknown fields and bad values raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError("config", f"expected an object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(key, "unknown field")
        cfg = cls(**data)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for f in fields(self):
            check_field(f.name, getattr(self, f.name))
        if estimated_params(self) > MAX_PARAMS:
            raise ConfigError(
                "width", f"depth {self.depth} x width {self.width} is over {MAX_PARAMS:,} parameters"
            )


class ConfigError(ValueError):
    """A config value is wrong; `field` names it, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": ("digits", "synthetic", "mnist", "fashion_mnist", "cifar10"),
    "model": ("mlp", "cnn"),
    "activation": ("relu", "tanh"),
    "init": ("default", "kaiming", "xavier", "normal"),
    "optimizer": ("sgd", "adam", "adamw"),
    "device": ("auto", "cpu", "cuda"),
}

# Inclusive bounds. They keep one request from asking for a run that cannot fit a machine.
LIMITS: dict[str, tuple[float, float]] = {
    "depth": (1, 64),
    "width": (1, 2048),
    "l2": (0.0, 10.0),
    "dropout": (0.0, 0.9),
    "init_std": (1e-6, 10.0),
    "lr": (1e-8, 1e4),
    "momentum": (0.0, 0.999),
    "grad_clip": (0.0, 1e6),
    "batch_size": (1, 4096),
    "steps": (1, 1_000_000),
    "eval_every": (0, 1_000_000),
    "seed": (0, 2**31 - 1),
    "stats_every": (1, 1_000_000),
    "alert_factor": (1.0, 1e6),
}

# The fields a running run accepts changes to (PATCH / control messages).
LIVE_FIELDS = ("l2", "lr", "grad_clip")

_TYPES = {f.name: f.type for f in fields(RunConfig)}


def check_field(name: str, value: Any) -> Any:
    """Check one field's value; returns it (ints given as whole floats are not accepted)."""
    kind = _TYPES[name]
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(name, f"expected true or false, got {value!r}")
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(name, f"expected an integer, got {value!r}")
    elif kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(name, f"expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(name, f"expected a finite number, got {value!r}")
    elif kind == "str" and value not in CHOICES[name]:
        raise ConfigError(name, f"expected one of {', '.join(CHOICES[name])}, got {value!r}")
    if name in LIMITS:
        lo, hi = LIMITS[name]
        if not lo <= value <= hi:
            raise ConfigError(name, f"must be between {lo:g} and {hi:g}, got {value!r}")
    return value


# Rough cap on what one run may ask of a machine (parameters, both model kinds).
MAX_PARAMS = 50_000_000


def estimated_params(cfg: RunConfig, in_features: int = 3 * 32 * 32, n_classes: int = 10) -> int:
    """Upper estimate of the parameter count, used to refuse runs that could not fit."""
    w = cfg.width
    if cfg.model == "mlp":
        return in_features * w + (cfg.depth - 1) * w * w + w * n_classes + 4 * w * cfg.depth
    return 3 * 9 * w + (cfg.depth - 1) * 9 * w * w + w * n_classes + 4 * w * cfg.depth
