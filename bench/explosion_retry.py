"""The explosion preset's `plain` run, retried from its last checkpoint before the blow-up with
other settings (issue 16; the table in docs/presets.md). CPU, one torch thread, seed 0:

    .venv/bin/python bench/explosion_retry.py

The parent trains with checkpoints every 10 steps (the default) and diverges; each retry is a
fork from `summary.checkpoint_before_divergence` with one change, trained to step 300 as the
preset is. Printed per retry: status, the step it diverged at (if it did), the best and last
validation accuracy, and the largest global gradient norm after the fork step.
"""

from __future__ import annotations

import tempfile
from typing import Any

import torch
from gradwatch import checkpoint
from gradwatch.loop import train
from gradwatch.presets import resolve

RETRIES: list[dict[str, Any]] = [
    {},  # no change: the same blow-up again, at the same step
    {"grad_clip": 1.0},
    {"grad_clip": 5.0},
    {"lr": 0.1},
    {"lr": 0.03},
    {"l2": 1e-4},
    {"momentum": 0.5},
    {"lr": 0.01},
    {"lr": 0.1, "grad_clip": 1.0},
    {"lr": 0.03, "grad_clip": 1.0},
]


def run(changes: dict[str, Any], resume: str, keep: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    cfg = resolve("explosion", {"device": "cpu", **changes})
    summary = train(cfg, events.append, checkpoints=keep, resume=resume, changes=changes)
    steps = [e for e in events if e["type"] == "metrics"]
    norms = [e["global_grad_norm"] for e in steps if e.get("global_grad_norm") is not None]
    return {**summary, "first": steps[0]["step"], "max_norm": max(norms) if norms else float("nan")}


def main() -> None:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        parent = train(resolve("explosion", {"device": "cpu"}), lambda e: None, checkpoints=f"{d}/parent")
        at = parent["checkpoint_before_divergence"]
        print(f"plain: {parent['status']} at step {parent.get('diverged_step')}; checkpoints "
              f"{checkpoint.steps(f'{d}/parent')}; retried from step {at}")
        print(f"| change from step {at} | status | diverged at | best val | last val | max global grad norm after |")
        print("| --- | --- | --- | --- | --- | --- |")
        for i, changes in enumerate(RETRIES):
            s = run(changes, str(checkpoint.path_for(f"{d}/parent", at)), f"{d}/fork{i}")
            what = ", ".join(f"{k} {v:g}" for k, v in changes.items()) or "none"
            best, last = s.get("best_val_accuracy"), s.get("val_accuracy")
            fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
            print(f"| {what} | {s['status']} | {s.get('diverged_step') or '-'} | {fmt(best)} | {fmt(last)} "
                  f"| {s['max_norm']:.3g} |")


if __name__ == "__main__":
    main()
