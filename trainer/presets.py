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
    expect: str  # what should happen, measured on the CPU (seed 0)


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
            "BatchNorm the gradient norms grow step by step, the explosion alert fires, and the loss "
            "turns non-finite within a few dozen steps: the run ends `diverged`. With BatchNorm the same "
            "network, optimizer and learning rate train to about 94% validation accuracy. Strong L2 "
            "(0.05) keeps the plain network finite, but only by shrinking its weights and gradients "
            "towards zero: it stays at chance, with most of its ReLU units dead (the Dead ReLU units "
            "chart). Finite is not the same as learning; compare the weight norms and the validation "
            "accuracy, not just the status."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 20, "width": 128, "init": "kaiming",
                "optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "batchnorm": False, "l2": 0.0,
                "batch_size": 64, "steps": 300, "eval_every": 25, "seed": 0},
        variants=(
            Variant("plain", "no BN", {}, "diverges at step 15, after explosion alerts at steps 13 and 14"),
            Variant("bn", "BN", {"batchnorm": True}, "completes, ~94% validation accuracy"),
            Variant("plain-l2", "no BN, L2 0.05", {"l2": 0.05},
                    "stays finite: ‖fc4.weight‖ decays 16 → 2e-6, ~70% dead units, ~11% (chance)"),
            Variant("bn-l2", "BN, L2 5e-4", {"batchnorm": True, "l2": 5e-4}, "completes, ~92% validation accuracy"),
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
            "ratios are the largest. The no-BN variant (Kaiming init) has flat gradient norms."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 32, "width": 128, "batchnorm": True,
                "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "steps": 200, "eval_every": 50,
                "stats_every": 5, "seed": 0},
        variants=(
            Variant("bn", "BN", {}, "step 1: grad norm fc1 / fc32 ≈ 300, about 1.2x per layer"),
            Variant("plain", "no BN, Kaiming init", {"batchnorm": False, "init": "kaiming"},
                    "grad norms flat across depth (fc1 / fc32 ≈ 0.5); learns, then gradient spikes "
                    "(alerts) undo it: val 0.44 at step 100, 0.09 at the end"),
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
            "effective learning rate lr/‖w‖². Without L2 the weight norms grow (6.5 to 9 here) and the "
            "effective learning rate falls by half; with L2 5e-3 they shrink to an equilibrium (about 3) "
            "and the effective learning rate ends about 9 times higher (0.010 against 0.0012), as do the "
            "update ratios. Compare the Effective learning rate chart and the weight norms between the "
            "variants; without BN, L2 is plain weight decay."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 6, "width": 128, "batchnorm": True,
                "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "l2": 5e-3, "steps": 1000,
                "eval_every": 100, "stats_every": 10, "seed": 0},
        variants=(
            Variant("bn-l2", "BN, L2 5e-3", {}, "‖fc4.weight‖ 6.5 → 3.1, eff. lr 0.0024 → 0.010; ~94%"),
            Variant("bn", "BN, no L2", {"l2": 0.0}, "‖fc4.weight‖ 6.5 → 9.1, eff. lr 0.0024 → 0.0012; ~97%"),
            Variant("bn-l2-strong", "BN, L2 2e-2", {"l2": 0.02}, "‖w‖ → 2.3, eff. lr ≈ 0.02; ~85%"),
            Variant("plain-l2", "no BN, L2 5e-3", {"batchnorm": False}, "completes, ~93%; no BN, so no eff. lr"),
        ),
        reference="van Laarhoven (2017), L2 Regularization versus Batch and Weight Normalization, arXiv:1706.05350",
        watch=("weight_norm", "stats.eff_lr", "update_ratio"),
    ),
    Preset(
        name="lr-robustness",
        title="BatchNorm tolerates learning rates that break the plain network",
        explanation=(
            "An 8-layer MLP (Kaiming init, SGD + momentum 0.9) at several learning rates, with and "
            "without BatchNorm. Without BN it trains at lr 0.02 and diverges at 0.1 and above (every seed "
            "we tried). With BN it trains from 0.02 up to 1.0; at 3.0 it breaks too: BN widens the range "
            "of usable learning rates, it does not remove the limit."
        ),
        config={"dataset": "digits", "model": "mlp", "depth": 8, "width": 128, "init": "kaiming",
                "batchnorm": True, "optimizer": "sgd", "lr": 0.3, "momentum": 0.9, "steps": 300,
                "eval_every": 25, "seed": 0},
        variants=(
            Variant("plain-0.02", "no BN, lr 0.02", {"batchnorm": False, "lr": 0.02}, "completes, ~97%"),
            Variant("plain-0.3", "no BN, lr 0.3", {"batchnorm": False}, "diverges at step 9"),
            Variant("bn-0.3", "BN, lr 0.3", {}, "completes, ~96%"),
            Variant("bn-1", "BN, lr 1.0", {"lr": 1.0}, "completes, ~93%"),
            Variant("bn-3", "BN, lr 3.0", {"lr": 3.0}, "stays finite but learns nothing (~13%); 14 alerts"),
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
                    "completes, ~99% validation accuracy"),
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
