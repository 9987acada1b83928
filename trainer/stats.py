"""The per-layer statistics, said once: what each is, how often the probe takes it, what it is
per, and how it is drawn. Importable without torch (the server reads it too).

Who reads this list:
- the probe (trainer/probe.py) sends exactly these names, computed under each one's name;
- the store (server/columns.py, server/migrations.py): a `stored` statistic has a float32 BLOB
  column of its own, in `series` (every step) or `layer_stats` (every stats_every steps); one
  that has no column yet gets it at start-up, by the migration generated from this list;
- the ingest checks (server/wire.py): which fields a metrics event may carry, and how long each
  array is (one value per parameter, per hidden activation or per BatchNorm);
- the API: /metrics' schema (server/schemas.py), /heatmap's choices, the CSV export, and
  GET /api/stats, which serves this list to the page;
- the page (frontend/js/stats.js): the heatmap's menu, titles and log or linear, the profile
  charts' titles, and which statistics it asks /metrics for.

Adding a statistic: an entry here, and its computation in the probe (tests/fast/test_stats.py
checks that everyone else agrees).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

STEP, STATS = "step", "stats"  # taken every step; every stats_every steps (and at step 1)


@dataclass(frozen=True)
class Stat:
    name: str  # the field in a metrics event (a `stats` step's: in its `stats` object), the column
    cadence: Literal["step", "stats"]
    per: Literal["parameter", "activation", "bn"]  # one value per parameter tensor, hidden activation, BatchNorm
    title: str  # short: a colour bar's title, an axis's unless `axis` says otherwise
    label: str  # the heatmap menu's entry
    unit: str  # "" for a plain number
    description: str
    scale: Literal["log", "linear"] = "log"  # how the page draws it (linear: a fraction, 0 included)
    heatmap: bool = False  # offered on the layer x step heatmap
    stored: bool = True  # a column of its own (else it stays in the event's JSON only)
    line: Literal["median", "mean"] | None = None  # a line chart of it, over the layers
    axis: str = ""  # an axis title, where a formula says it better than the title

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# In the order of the store's columns (a new one goes at the end of its cadence's group).
REGISTRY: tuple[Stat, ...] = (
    Stat("grad_norm", STEP, "parameter", "grad norm", "gradient norm", "",
         "‖g‖, the L2 norm of the parameter's gradient before the step (before clipping)", heatmap=True),
    Stat("weight_norm", STEP, "parameter", "weight norm", "weight norm", "",
         "‖w‖, the L2 norm of the parameter before the step", heatmap=True),
    Stat("update_ratio", STEP, "parameter", "update ratio", "update ratio", "",
         "the norm of the update the optimizer applied over the weight's norm", heatmap=True,
         axis="‖Δw‖ / ‖w‖"),
    Stat("grad_weight_ratio", STEP, "parameter", "‖g‖ / ‖w‖", "gradient / weight norm", "",
         "‖g‖ / ‖w‖, the gradient's norm over the weight's, both before the step (0 where ‖w‖ is 0)",
         heatmap=True),
    Stat("act_mean", STATS, "activation", "activation mean", "activation mean", "",
         "the mean of the activation's output over the batch"),
    Stat("act_std", STATS, "activation", "activation std", "activation std (per activation)", "",
         "the standard deviation of the activation's output over the batch", heatmap=True),
    Stat("dead_frac", STATS, "activation", "dead units", "dead ReLU units (per activation)", "",
         "units <= 0 for the whole batch (ReLU)", scale="linear", heatmap=True, line="mean"),
    Stat("eff_lr", STATS, "bn", "effective lr", "effective learning rate", "",
         "lr / ||w||^2 of the weight feeding each BN", line="median", axis="lr / ‖w‖²"),
    Stat("bn_mean_drift", STATS, "bn", "running-mean drift", "BN running-mean drift", "",
         "how far the BatchNorm's running mean moved since the last stats step (L2)"),
    Stat("bn_var_drift", STATS, "bn", "running-var drift", "BN running-var drift", "",
         "how far the BatchNorm's running variance moved since the last stats step (L2)"),
    Stat("bn_gamma_norm", STATS, "bn", "γ norm", "BN γ norm", "", "‖γ‖ of the BatchNorm", stored=False),
    Stat("bn_beta_norm", STATS, "bn", "β norm", "BN β norm", "", "‖β‖ of the BatchNorm", stored=False),
)
BY_NAME = {s.name: s for s in REGISTRY}
assert len(BY_NAME) == len(REGISTRY), "a statistic is listed twice"

PER_STEP = tuple(s.name for s in REGISTRY if s.cadence == STEP)  # top-level arrays of a metrics event
PER_STATS_STEP = tuple(s.name for s in REGISTRY if s.cadence == STATS)  # arrays of its `stats` object
STORED_STEP = tuple(s.name for s in REGISTRY if s.cadence == STEP and s.stored)  # `series` columns
STORED_STATS = tuple(s.name for s in REGISTRY if s.cadence == STATS and s.stored)  # `layer_stats` columns
BY_ACTIVATION = tuple(s.name for s in REGISTRY if s.per == "activation")
BY_BN = tuple(s.name for s in REGISTRY if s.per == "bn")
HEATMAP = tuple(s.name for s in REGISTRY if s.heatmap)
assert all(BY_NAME[n].per == "parameter" for n in PER_STEP), "every-step statistics are per parameter"
