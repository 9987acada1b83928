"""RunConfig: every knob of a training run, one flat dataclass, validated in one place.

The field names are the API: the REST body's `config`, the CLI flags and the form all use
them. Each field says everything about itself once, with the keywords of pydantic's `Field`:
its default, a `description` (units, or why) and, for numbers, inclusive bounds `ge`/`le`;
a field with options is a `Literal`. From these come the server's request schema and
GET /api/config-schema (server/schemas.py), the page's launch form (frontend/js/form.js builds
it from that schema), the CLI's flags and help (trainer/headless.py) and README's table
(`python -m gradwatch.config`; tests/test_config_source.py checks each against this file).
A plain dataclass rather than a pydantic model: the light client (`import gradwatch`) does not
need pydantic.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, fields
from typing import Any, Literal


def knob(default: Any, description: str, *, ge: float | None = None, le: float | None = None) -> Any:
    """A RunConfig field: its default, what it means, and its inclusive bounds (pydantic's words)."""
    bounds = {k: v for k, v in (("ge", ge), ("le", le)) if v is not None}
    return dataclasses.field(default=default, metadata={"description": description, **bounds})


@dataclass
class RunConfig:
    dataset: Literal["digits", "synthetic", "mnist", "fashion_mnist", "cifar10", "modadd"] = knob(
        "digits", "digits: offline (in scikit-learn); synthetic: generated; mnist, fashion_mnist, cifar10: "
                  "downloaded once; modadd: a + b mod 59 as tokens, generated (the transformer's task)")
    model: Literal["mlp", "cnn", "resnet", "transformer"] = knob(
        "mlp", "resnet: torchvision's ResNet-18/34, its stem made for small images; transformer: on modadd only")
    depth: int = knob(4, "hidden blocks (Linear/Conv, BN if on, activation); resnet: 18 or 34; transformer: blocks",
                      ge=1, le=64)
    width: int = knob(64, "units per hidden layer (mlp), channels (cnn) or model width (transformer); "
                          "resnet: torchvision's widths", ge=1, le=2048)
    activation: Literal["relu", "tanh"] = knob("relu", "the hidden layers' nonlinearity")
    batchnorm: bool = knob(False, "BatchNorm after every hidden Linear/Conv, before the activation "
                                  "(resnet: torchvision's BatchNorms, or none)")
    layernorm: Literal["pre", "post", "none"] = knob(
        "pre", "transformer: pre (LayerNorm before each branch), post (after each residual add, "
               "the 2017 layout) or none")
    l2: float = knob(0.0, "weight decay on Linear/Conv weights (not biases, not BN); 0 turns L2 off", ge=0.0, le=10.0)
    dropout: float = knob(0.0, "dropout probability after each hidden activation; 0 = off", ge=0.0, le=0.9)
    init: Literal["default", "kaiming", "xavier", "normal"] = knob(
        "default", "weight init: default is PyTorch's; normal draws with init_std")
    init_std: float = knob(0.05, "standard deviation of init=normal", ge=1e-6, le=10.0)
    optimizer: Literal["sgd", "adam", "adamw"] = knob("sgd", "the optimizer (L2 is its weight decay)")
    lr: float = knob(0.05, "learning rate", ge=1e-8, le=1e4)
    momentum: float = knob(0.9, "SGD momentum (ignored by adam/adamw)", ge=0.0, le=0.999)
    grad_clip: float = knob(0.0, "clip the global gradient norm to this; 0 = off", ge=0.0, le=1e6)
    batch_size: int = knob(64, "examples per step", ge=1, le=4096)
    steps: int = knob(500, "optimizer steps in the run", ge=1, le=1_000_000)
    eval_every: int = knob(50, "steps between validation passes; 0 = only at the end", ge=0, le=1_000_000)
    seed: int = knob(0, "seeds init and data order: same seed, same init and data order", ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "auto: CUDA when available")
    stats_every: int = knob(10, "steps between the costlier statistics (activations, BN drift)", ge=1, le=1_000_000)
    alert_factor: float = knob(10.0, "alert when a layer's gradient norm (or the loss) reaches this many times its "
                                     "own baseline (and far past its usual spread, in several layers at once; one "
                                     "layer alone: the square of this)", ge=1.0, le=1e6)
    amp: bool = knob(False, "bf16 autocast on CUDA (ignored on the CPU)")
    checkpoint_every: int = knob(10, "steps between checkpoints a fork can start from (runs the server trains); "
                                     "0 = none", ge=0, le=1_000_000)
    checkpoint_keep: int = knob(20, "most checkpoints kept per run, spread over the run (the newest always)",
                                ge=2, le=1000)
    gpus: int = knob(-1, "GPUs for this run's worker on the Ray launcher; -1 = 1 when the cluster has GPUs, "
                         "else 0", ge=-1, le=8)

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
        if self.model == "resnet" and self.depth not in RESNET_DEPTHS:
            raise ConfigError("depth", f"a resnet is {' or '.join(map(str, RESNET_DEPTHS))} layers deep, "
                                       f"got {self.depth}")
        if (self.model == "transformer") != (self.dataset == "modadd"):
            raise ConfigError("model" if self.dataset == "modadd" else "dataset",
                              "the transformer trains on the token task modadd, and modadd needs the transformer")
        if estimated_params(self) > MAX_PARAMS:
            raise ConfigError(
                "width", f"depth {self.depth} x width {self.width} is over {MAX_PARAMS:,} parameters"
            )
        need, budget = estimated_memory(self), memory_budget()
        if need["total"] > budget:
            raise ConfigError("batch_size", f"needs about {_gib(need['total'])} of memory (activations of a batch "
                              f"{_gib(need['activations'])}, weights and optimizer state {_gib(need['parameters'])}, "
                              f"data {_gib(need['data'])}, the worker itself {_gib(need['runtime'])}), over the "
                              f"limit of {_gib(budget)} per worker (GRADWATCH_WORKER_MEMORY): a smaller batch, "
                              "width or depth fits")


class ConfigError(ValueError):
    """A config value is wrong; `field` names it, `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# What the fields say, gathered for the code that reads them (all derived from RunConfig above).
_HINTS = typing.get_type_hints(RunConfig)
CHOICES: dict[str, tuple[str, ...]] = {  # a Literal field's options
    f.name: typing.get_args(_HINTS[f.name]) for f in fields(RunConfig) if typing.get_origin(_HINTS[f.name]) is Literal
}
# "bool" | "int" | "float" | "str" (a field with options is a "str")
KINDS: dict[str, str] = {f.name: "str" if f.name in CHOICES else _HINTS[f.name].__name__ for f in fields(RunConfig)}
# Inclusive bounds. They keep one request from asking for a run that cannot fit a machine.
LIMITS: dict[str, tuple[float, float]] = {
    f.name: (f.metadata["ge"], f.metadata["le"]) for f in fields(RunConfig) if "ge" in f.metadata
}
DESCRIPTIONS: dict[str, str] = {f.name: f.metadata["description"] for f in fields(RunConfig)}

# The fields a running run accepts changes to (PATCH / control messages).
LIVE_FIELDS = ("l2", "lr", "grad_clip")

def check_field(name: str, value: Any) -> Any:
    """Check one field's value; returns it (ints given as whole floats are not accepted)."""
    kind = KINDS[name]
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


RESNET_DEPTHS = (18, 34)
TOKEN_VOCAB = 60  # trainer/data.py's TOKENS (kept here so the config imports no torch)

# Rough cap on what one run may ask of a machine (parameters, both model kinds).
MAX_PARAMS = 50_000_000


def estimated_params(cfg: RunConfig, in_features: int = 3 * 32 * 32, n_classes: int = 10) -> int:
    """Upper estimate of the parameter count, used to refuse runs that could not fit."""
    w = cfg.width
    if cfg.model == "resnet":  # torchvision's counts, with our 3x3 stem on 3 channels
        return {18: 11_200_000, 34: 21_300_000}[cfg.depth] + 512 * n_classes
    if cfg.model == "transformer":  # per block: 4 projections, the 4x MLP, 2 LayerNorms
        return TOKEN_VOCAB * w + 8 * w + cfg.depth * (12 * w * w + 13 * w) + w * n_classes + 2 * w
    if cfg.model == "mlp":
        return in_features * w + (cfg.depth - 1) * w * w + w * n_classes + 4 * w * cfg.depth
    return 3 * 9 * w + (cfg.depth - 1) * 9 * w * w + w * n_classes + 4 * w * cfg.depth


# ---- memory: what a run needs, and what one worker may take ----------------------------------

# Each dataset's examples: (channels, height, width, count); see trainer/data.py.
DATASET_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "digits": (1, 8, 8, 1797), "synthetic": (1, 8, 8, 2048), "mnist": (1, 28, 28, 70_000),
    "fashion_mnist": (1, 28, 28, 70_000), "cifar10": (3, 32, 32, 60_000),
    "modadd": (1, 1, 3, 59 * 59),  # 3 tokens (int64: counted as two floats each below)
}
EVAL_CHUNK = 4096  # examples per forward pass of models.evaluate
WORKER_RUNTIME = 256 * 2**20  # bytes a CPU worker holds before its first step (measured: ~245 MiB)


def estimated_memory(cfg: RunConfig) -> dict[str, int]:
    """Bytes a run needs, from its config alone (float32 throughout; an upper-end estimate):

    - activations: what autograd keeps of one batch for the backward pass (per hidden block the
      Linear/Conv output, the BatchNorm output, the activation and the dropout mask, as the run
      has them, and the input), and the gradient of the largest block while backward runs; or
      an evaluation chunk's two largest blocks, the larger;
    - parameters: weights, gradients, optimizer state (momentum: 1 copy, Adam: 2) and one more
      copy for the probe's update norms;
    - data: the whole dataset, held on the device (trainer/data.py);
    - runtime: what a worker takes before its first step (interpreter, torch, the data pipeline).
    Against the peak RSS of 8 CPU runs of 3 steps (MLP and CNN, 16 to 2048 wide, batches 16 to
    4096, SGD and Adam): 0.99x to 1.46x of it (docs/security.md)."""
    c, h, w, n = DATASET_SHAPES[cfg.dataset]
    blocks = []  # elements of one example's output of each hidden block
    size = w
    saved = 2 + int(cfg.batchnorm) + int(cfg.dropout > 0)  # tensors kept per block
    if cfg.model == "resnet":  # BasicBlocks: stages of 64..512 channels, each halving the size
        for stage, count in enumerate((2, 2, 2, 2) if cfg.depth == 18 else (3, 4, 6, 3)):
            blocks += [(64 << stage) * size * size] * count
            size = (size + 1) // 2
        saved = 4 + 2 * int(cfg.batchnorm) + int(cfg.dropout > 0)  # two convs, two BNs, two ReLUs
    elif cfg.model == "transformer":  # per block and token: q, k, v, o, the 4x MLP twice, LNs, sums
        blocks = [16 * w * cfg.width] * cfg.depth
        saved = 1 + int(cfg.dropout > 0)
    else:
        for i in range(1, cfg.depth + 1):
            blocks.append(cfg.width * (size * size if cfg.model == "cnn" else 1))
            if cfg.model == "cnn" and size > 8 and i % 2 == 0:  # models.build pools here
                size //= 2
    per_example = c * h * w + saved * sum(blocks) + max(blocks)
    evaluation = min(EVAL_CHUNK, max(1, n // 10)) * 2 * max(blocks)
    states = {"sgd": 1 if cfg.momentum > 0 else 0, "adam": 2, "adamw": 2}[cfg.optimizer]
    out = {
        "activations": 4 * max(cfg.batch_size * per_example, evaluation),
        "parameters": 4 * estimated_params(cfg, c * h * w) * (3 + states),
        "data": 4 * n * c * h * w,
        "runtime": WORKER_RUNTIME,
    }
    out["total"] = sum(out.values())
    return out


def memory_budget(env: dict[str, str] | None = None) -> int:
    """Bytes one run may need: GRADWATCH_WORKER_MEMORY (`8G`, `512M`, bytes), else half of this
    machine's memory. The server refuses a bigger run with a 422 before any worker starts."""
    raw = (os.environ if env is None else env).get("GRADWATCH_WORKER_MEMORY")
    if raw:
        return parse_size(raw)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 8 * 2**30


def parse_size(raw: str) -> int:
    """Bytes: `1073741824`, or with a binary unit, `512M`, `8G` (K, M, G, T; a trailing B or iB is fine)."""
    text = raw.strip().upper().removesuffix("IB").removesuffix("B")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    scale = units.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in units else text
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"expected bytes, or a number with K, M, G or T, got {raw!r}") from None
    if not value >= 1 or value * scale > 2**62:
        raise ValueError(f"expected a size from 1 byte to 4 EiB, got {raw!r}")
    return int(value * scale)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**28 else f"{n / 2**20:.0f} MiB"


def markdown_table() -> str:
    """README's RunConfig table, from the fields above (`python -m gradwatch.config` prints it)."""
    def code(v: Any) -> str:
        return f"`{str(v).lower() if isinstance(v, bool) else v}`"

    def num(v: float) -> str:
        return f"{int(v):,}" if v == int(v) else f"{v:g}"

    rows = ["| field | default | allowed | meaning |", "| --- | --- | --- | --- |"]
    for f in fields(RunConfig):
        if f.name in CHOICES:
            allowed = ", ".join(map(code, CHOICES[f.name]))
        elif f.name in LIMITS:
            allowed = f"{num(LIMITS[f.name][0])} to {num(LIMITS[f.name][1])}"
        else:
            allowed = "true, false"
        rows.append(f"| `{f.name}` | {code(f.default)} | {allowed} | {DESCRIPTIONS[f.name]} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
