"""The diagnosis on real models, not only the built-in trainer's: is it quiet while they train well,
and whom does it blame when one step wrecks them? (bench/alert_quality.py covers the built-ins.)

    .venv/bin/python bench/alert_quality_real.py            # 2 seeds, 400 steps: minutes (16 on a busy 2-core VM)
    .venv/bin/python bench/alert_quality_real.py --steps 100 --seeds 1   # a quick look

Offline, CPU, one torch thread; the probe and the detector as an own loop uses them (`watch`,
`Diagnosis`), every step:

- healthy: a 4-layer BERT (Hugging Face transformers, 73 tensors, its attention key biases among
  them) learning a token task with AdamW, linear warmup and decay, gradient clipping; and a
  torchvision ResNet-18 (62 tensors, BatchNorm) on the digits upscaled to 32x32 with SGD,
  momentum, weight decay and a one-cycle schedule. Any alert on them is a false alert.
- wrecked: the same BERT with one AdamW step of lr 0.3 and no clipping, which scrambles every
  weight: the alert at the next step should name the layer whose gradient grew most among those
  above rounding noise (computed from the recorded norms), never a key bias (whose gradient is
  rounding noise, ~1e-12 of the global norm).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradwatch.diagnosis import NOISE, Diagnosis  # noqa: E402
from gradwatch.probe import watch  # noqa: E402


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(
        vocab_size=200, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, num_labels=2))


def token_batch(g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(5, 200, (32, 32), generator=g)
    return x, (x == 7).any(1).long()  # does token 7 occur


def watched(model: nn.Module, opt: torch.optim.Optimizer, n_classes: int) -> tuple[Any, Diagnosis, dict]:
    probe = watch(model, opt, stats_every=1)
    diagnosis = Diagnosis(probe.names, 10.0, n_classes)
    seen: dict[str, list] = {"norms": [], "alerts": []}

    def on_step(stats: dict[str, Any]) -> None:
        seen["norms"].append([*stats["grad_norm"], stats["global_grad_norm"]])
        seen["alerts"] += [e for e in diagnosis.step(stats) if e["type"] == "alert"]

    probe.on_step = on_step
    return probe, diagnosis, seen


def healthy_bert(seed: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = bert()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (steps - s) / (steps - warm))))
    probe, diagnosis, seen = watched(model, opt, 2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = token_batch(g)
        out = model(input_ids=x, labels=y)
        opt.zero_grad()
        out.loss.backward()
        probe.record(out.loss, (out.logits.argmax(1) == y).float().mean())
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    probe.close()
    return {"run": f"bert s{seed}", "tensors": len(probe.names), "steps": steps, "alerts": seen["alerts"],
            "loss": diagnosis.summary["loss"], "accuracy": diagnosis.summary["accuracy"]}


def healthy_resnet(seed: int, steps: int) -> dict[str, Any]:
    import torchvision
    from sklearn.datasets import load_digits

    torch.manual_seed(seed)
    d = load_digits()
    xs = nn.functional.interpolate(torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16, size=32)
    xs, ys = xs.repeat(1, 3, 1, 1), torch.tensor(d.target)
    model = torchvision.models.resnet18(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps)
    probe, diagnosis, seen = watched(model, opt, 10)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(xs), (64,), generator=g)
        out = model(xs[idx])
        loss = nn.functional.cross_entropy(out, ys[idx])
        opt.zero_grad()
        loss.backward()
        probe.record(loss, (out.argmax(1) == ys[idx]).float().mean())
        opt.step()
        sched.step()
    probe.close()
    return {"run": f"resnet18 s{seed}", "tensors": len(probe.names), "steps": steps, "alerts": seen["alerts"],
            "loss": diagnosis.summary["loss"], "accuracy": diagnosis.summary["accuracy"]}


def wrecked_bert(seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    model = bert()
    opt = torch.optim.AdamW(model.parameters(), lr=0.3)
    probe, _, seen = watched(model, opt, 2)
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        x, y = token_batch(g)
        out = model(input_ids=x, labels=y)
        opt.zero_grad()
        out.loss.backward()
        probe.record(out.loss, (out.logits.argmax(1) == y).float().mean())
        opt.step()
    probe.close()
    first, second = np.array(seen["norms"])
    real = first[:-1] >= NOISE * first[-1]
    grew = np.where(real, second[:-1] / first[:-1], -np.inf)
    want = probe.names[int(np.argmax(grew))]
    named = seen["alerts"][0]["layer"] if seen["alerts"] else None
    return {"run": f"bert wrecked s{seed}", "named": named, "reference": want,
            "noise": [n for n, ok in zip(probe.names, real, strict=True) if not ok],
            "global_x": second[-1] / first[-1], "alerts": seen["alerts"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400, help="steps of each healthy run")
    ap.add_argument("--seeds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    healthy = [f(s, args.steps) for s in range(args.seeds) for f in (healthy_bert, healthy_resnet)]
    for r in healthy:
        print(f"healthy {r['run']}: {r['tensors']} tensors, {r['steps']} steps, final loss {r['loss']:.3g}, "
              f"batch accuracy {r['accuracy']:.2f}: {len(r['alerts'])} alerts",
              *[f"\n  false alert: step {a['step']} {a['kind']} {a.get('layer')}" for a in r["alerts"]])
    steps = sum(r["steps"] for r in healthy)
    false = sum(len(r["alerts"]) for r in healthy)
    print(f"healthy: {false} false alerts in {steps} steps = {1000 * false / steps:.2f} per 1000 steps")
    for s in range(args.seeds):
        w = wrecked_bert(s)
        same = "same" if w["named"] == w["reference"] else "DIFFERENT"
        kinds = ", ".join(sorted({".".join(n.split(".")[-2:]) for n in w["noise"]}))
        print(f"{w['run']}: global norm x{w['global_x']:.3g} at step 2; alerts "
              f"{[(a['step'], a['kind']) for a in w['alerts']]}; named {w['named']}; "
              f"grew most (above rounding noise) {w['reference']}: {same}; "
              f"rounding-noise tensors: {len(w['noise'])} ({kinds})")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
