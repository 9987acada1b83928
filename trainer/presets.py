"""Presets that teach: named configs, each with what to look at and why, and variants to compare.

A preset is a set of RunConfig fields over the defaults; a variant is a few fields over the
preset (BN on/off, an L2 strength, a learning rate). `resolve(name, overrides)` gives the
validated config: defaults, then the preset, then the overrides (a variant's, or the person's
own). The numbers were found with quick CPU runs on `digits` (docs/presets.md records them);
they are shown as they came out, failures included.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import ConfigError, RunConfig


@dataclass(frozen=True)
class Variant:
    name: str  # short id, e.g. "bn"
    title: str  # what the UI shows
    config: dict[str, Any]  # fields over the preset's config
    expect: str  # what should happen, measured on the CPU (seed 0, one torch thread)
    # The claims of `expect` as numbers, each checked against a real run by tests/test_presets.py:
    # status, diverged_step, alerts ([step, kind] of every alert), alerted (any spike alert),
    # val / best_val (final and best validation accuracy: low, high), w4 (‖fc4.weight‖ at the
    # first and last step: (low, high) each), dead (mean dead-unit fraction at the last statistics
    # step), eff_lr (mean effective lr at the first and last statistics step), grad_fc1_fc32
    # (step 1's gradient norm ratio fc1 / fc32).
    checks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    explanation: str  # a few sentences: what to look at and why
    config: dict[str, Any]  # fields over RunConfig's defaults
    variants: tuple[Variant, ...] = ()
    reference: str | None = None  # the paper it illustrates
    watch: tuple[str, ...] = field(default=())  # the metrics to look at, in the wire format's names


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(
        name="explosion",
        title="Exploding gradients in a deep MLP, and what BatchNorm and L2 do about it",
        explanation=(
            "A 20-layer ReLU MLP (Kaiming init) trained with SGD + momentum 0.9 at lr 0.3. Without "
            "BatchNorm it trains for a dozen steps, then its gradients blow up in two steps, every layer "
            "at once (some 100x, then 10^5x over their own baselines): a gradient-spike alert fires at the "
            "first of them, the loss turns non-finite right after, and the run ends `diverged`, naming the "
            "layer whose departure began first. With BatchNorm the same network, optimizer and learning "
            "rate reach about 94% validation accuracy at best. Strong L2 "
            "(0.05) keeps the plain network finite, but only by shrinking its weights and gradients "
            "towards zero: it stays at chance, with most of its ReLU units dead (the Dead ReLU units "
            "chart). Finite is not the same as learning; compare the weight norms and the validation "
            "accuracy, not just the status."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 20, "width": 128, "init": "kaiming",
                "optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "batchnorm": False, "l2": 0.0,
                "batch_size": 64, "steps": 300, "eval_every": 25, "seed": 0},
        variants=(
            Variant("plain", "no BN", {}, "a gradient-spike alert at step 13, non-finite at step 15",
                    {"status": "diverged", "diverged_step": 15, "alerts": [[13, "grad_spike"], [15, "nonfinite"]]}),
            Variant("bn", "BN", {"batchnorm": True}, "completes, best ~94% validation accuracy (last ~90%)",
                    {"status": "completed", "alerts": [], "best_val": (0.92, 0.97), "val": (0.85, 0.95)}),
            Variant("plain-l2", "no BN, L2 0.05", {"l2": 0.05},
                    "stays finite: ‖fc4.weight‖ decays 16 → 2e-6, ~70% dead units, ~11% (chance)",
                    {"status": "completed", "w4": ((15, 17), (1e-6, 4e-6)), "dead": (0.6, 0.8), "val": (0.05, 0.15)}),
            Variant("bn-l2", "BN, L2 5e-4", {"batchnorm": True, "l2": 5e-4},
                    "completes, best ~90% validation accuracy; it swings (last ~76%)",
                    {"status": "completed", "alerts": [], "best_val": (0.87, 0.94), "val": (0.65, 0.85)}),
        ),
        watch=("grad_norm", "global_grad_norm", "alert", "weight_norm", "val_accuracy"),
    ),
    Preset(
        name="bn-depth",
        title="BatchNorm at initialization: gradients grow towards the input",
        explanation=(
            "A 32-layer MLP with BatchNorm, at initialization. Look at the per-layer gradient norms of "
            "the first steps: they grow by about 1.2x per layer from the output back to the input "
            "(some 300x from fc32 to fc1 at width 128). Yang et al. show that BatchNorm itself causes "
            "this gradient explosion at initialization, for any width; it is why very deep BN networks "
            "want a small learning rate or warm-up at the start, and why the first layers' update "
            "ratios are the largest. The no-BN variant (Kaiming init) has flat gradient norms and "
            "learns more slowly here."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 32, "width": 128, "batchnorm": True,
                "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "steps": 200, "eval_every": 50,
                "stats_every": 5, "seed": 0},
        variants=(
            Variant("bn", "BN", {}, "step 1: grad norm fc1 / fc32 ≈ 300, about 1.2x per layer; best ~82%",
                    {"status": "completed", "grad_fc1_fc32": (250, 400), "best_val": (0.75, 0.88)}),
            Variant("plain", "no BN, Kaiming init", {"batchnorm": False, "init": "kaiming"},
                    "grad norms flat across depth (fc1 / fc32 ≈ 0.5); best ~69% in 200 steps",
                    {"status": "completed", "grad_fc1_fc32": (0.3, 0.7), "best_val": (0.6, 0.78)}),
        ),
        reference="Yang, Pennington, Rao, Sohl-Dickstein, Schoenholz (2019), "
                  "A Mean Field Theory of Batch Normalization, ICLR",
        watch=("grad_norm", "update_ratio"),
    ),
    Preset(
        name="l2-bn",
        title="L2 with BatchNorm: weight norms and the effective learning rate",
        explanation=(
            "A 6-layer MLP with BatchNorm. A weight that feeds a BatchNorm can be scaled without changing "
            "the network's output, so L2 does not regularize it; what L2 changes is its norm, and so its "
            "effective learning rate lr/‖w‖². Without L2 the weight norms grow (6.5 to 9.4 here) and the "
            "effective learning rate falls by more than half; with L2 5e-3 they shrink to an equilibrium "
            "(about 3) and the effective learning rate ends about 9 times higher (0.0093 against 0.0010), "
            "as do the update ratios. Compare the Effective learning rate chart and the weight norms between the "
            "variants; without BN, L2 is plain weight decay."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 6, "width": 128, "batchnorm": True,
                "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "l2": 5e-3, "steps": 1000,
                "eval_every": 100, "stats_every": 10, "seed": 0},
        variants=(
            Variant("bn-l2", "BN, L2 5e-3", {}, "‖fc4.weight‖ 6.5 → 2.9, eff. lr 0.0024 → 0.0093; ~95%",
                    {"status": "completed", "w4": ((6.3, 6.7), (2.6, 3.2)),
                     "eff_lr": ((0.0022, 0.0025), (0.008, 0.011)), "val": (0.92, 0.98)}),
            Variant("bn", "BN, no L2", {"l2": 0.0}, "‖fc4.weight‖ 6.5 → 9.4, eff. lr 0.0024 → 0.0010; ~98%",
                    {"status": "completed", "w4": ((6.3, 6.7), (8.8, 10)),
                     "eff_lr": ((0.0022, 0.0025), (0.0008, 0.0012)), "val": (0.95, 1.0)}),
            Variant("bn-l2-strong", "BN, L2 2e-2", {"l2": 0.02}, "‖fc4.weight‖ → 2.9, eff. lr ≈ 0.012; ~92%",
                    {"status": "completed", "w4": ((6.3, 6.7), (2.5, 3.2)),
                     "eff_lr": ((0.0022, 0.0025), (0.009, 0.014)), "val": (0.87, 0.96)}),
            Variant("plain-l2", "no BN, L2 5e-3", {"batchnorm": False},
                    "completes, ~87% (best ~91%); no BN, so no eff. lr",
                    {"status": "completed", "val": (0.82, 0.92), "best_val": (0.87, 0.95)}),
        ),
        reference="van Laarhoven (2017), L2 Regularization versus Batch and Weight Normalization, arXiv:1706.05350",
        watch=("weight_norm", "stats.eff_lr", "update_ratio"),
    ),
    Preset(
        name="lr-robustness",
        title="BatchNorm tolerates learning rates that break the plain network",
        explanation=(
            "An 8-layer MLP (Kaiming init, SGD + momentum 0.9) at several learning rates, with and "
            "without BatchNorm. Without BN it trains at lr 0.02 and diverges at 0.3, after a gradient-spike "
            "alert two steps before. With BN it trains at 0.3 and 1.0; at 3.0 it stays finite but learns "
            "nothing: BN widens the range of usable learning rates, it does not remove the limit."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 8, "width": 128, "init": "kaiming",
                "batchnorm": True, "optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "steps": 300,
                "eval_every": 25, "seed": 0},
        variants=(
            Variant("plain-0.02", "no BN, lr 0.02", {"batchnorm": False, "lr": 0.02}, "completes, ~93% (best ~97%)",
                    {"status": "completed", "alerts": [], "val": (0.88, 0.97), "best_val": (0.93, 1.0)}),
            Variant("plain-0.3", "no BN, lr 0.3", {"batchnorm": False},
                    "a gradient-spike alert at step 7, non-finite at step 9",
                    {"status": "diverged", "diverged_step": 9, "alerts": [[7, "grad_spike"], [9, "nonfinite"]]}),
            Variant("bn-0.3", "BN, lr 0.3", {}, "completes, ~97%",
                    {"status": "completed", "alerts": [], "val": (0.93, 1.0)}),
            Variant("bn-1", "BN, lr 1.0", {"lr": 1.0}, "completes, ~96%",
                    {"status": "completed", "alerts": [], "val": (0.92, 1.0)}),
            Variant("bn-3", "BN, lr 3.0", {"lr": 3.0},
                    "stays finite but learns nothing (~13%: not learning); spike alerts come and go",
                    {"status": "completed", "val": (0.05, 0.15), "alerted": True}),
        ),
        reference="Ioffe & Szegedy (2015), Batch Normalization: Accelerating Deep Network Training by "
                  "Reducing Internal Covariate Shift, ICML",
        watch=("loss", "global_grad_norm", "val_accuracy"),
    ),
    Preset(
        name="mnist-cnn",
        title="An image classifier written the way it should be: conv + BN + L2",
        explanation=(
            "A 4-block CNN (3x3 conv, BatchNorm, ReLU; max-pool every second block; global average "
            "pool; one linear layer) with SGD + momentum and L2 5e-4 on the conv/linear weights only. "
            "It needs MNIST, which is downloaded on first use; on a machine without internet the run "
            "fails saying so. The `digits` variant is the same network on the 8x8 digits bundled with "
            "scikit-learn (no download): ~99% validation accuracy in 300 steps."
        ),
        config={"dataset": "mnist", "model": "cnn", "depth": 4, "width": 32, "batchnorm": True,
                "l2": 5e-4, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9, "batch_size": 128,
                "steps": 1000, "eval_every": 100, "seed": 0},
        variants=(
            Variant("mnist", "MNIST (download)", {}, "needs internet once; ~99% validation accuracy"),
            Variant("digits", "digits (offline)", {"dataset": "digits", "steps": 300, "eval_every": 50},
                    "completes, ~99% validation accuracy", {"status": "completed", "alerts": [], "val": (0.96, 1.0)}),
        ),
        watch=("loss", "val_accuracy", "grad_norm", "stats.dead_frac"),
    ),
)}


def resolve(name: str, overrides: dict[str, Any] | None = None) -> RunConfig:
    """RunConfig defaults, then the preset's fields, then `overrides`; validated.

    An unknown preset raises ConfigError naming the field `preset`."""
    preset = PRESETS.get(name)
    if preset is None:
        raise ConfigError("preset", f"unknown preset {name!r}; expected one of {', '.join(PRESETS)}")
    return RunConfig.from_dict({**RunConfig().to_dict(), **preset.config, **(overrides or {})})


def describe(preset: Preset) -> dict[str, Any]:
    """A preset as the API shows it: `config` is the full resolved config; a variant's `config`
    holds only the fields it changes (POST them as the run's `config` along with the preset)."""
    return {
        "name": preset.name,
        "title": preset.title,
        "explanation": preset.explanation,
        "reference": preset.reference,
        "watch": list(preset.watch),
        "config": resolve(preset.name).to_dict(),
        "variants": [{"name": v.name, "title": v.title, "config": v.config, "expect": v.expect}
                     for v in preset.variants],
    }
