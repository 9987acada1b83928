"""How right is the diagnosis? A labelled benchmark of the detector (trainer/diagnosis.py).

    .venv/bin/python bench/alert_quality.py                 # seeds 0-2, 84 runs, 2 processes: ~6 min idle
    .venv/bin/python bench/alert_quality.py --first-seed 3 --seeds 2   # seeds the detector was not tuned on
    .venv/bin/python bench/alert_quality.py --cache /tmp/aq  # keep each run's history; rerun = replay
    .venv/bin/python bench/alert_quality.py --quick          # seeds 0-1, 1000 healthy steps (fewer runs)

Real runs of the built-in trainer (digits, CPU, one torch thread each), two labelled sets:

- healthy: the default config with and without BN, and every preset's variant that trains
  (learns, stays finite), several seeds, HEALTHY_STEPS steps each. A healthy run that ends
  within 0.05 of chance or diverges is dropped from the set and listed.
- exploding: plain (no BN) deep MLPs and CNNs over a grid of learning rates, depths and seeds,
  including two-step blow-ups (lr-robustness `plain-0.3`: ×500 then ×1e9, then NaN). Only the
  runs that really reach a non-finite step count; the others are listed.

Reported, from each run's own events (the detector runs inside the trainer, as in production):
- false alerts per 1000 healthy steps (any `grad_spike`/`loss_spike` alert on a healthy run);
- recall: exploding runs with a spike alert before their first non-finite step;
- lead time: the first non-finite step minus the step the alert episode open at divergence
  started (0 when only the `nonfinite` alert fired), median; and how many runs whose norms rose
  over two or more steps (by the reference below) had a lead of at least one step;
- agreement of the named layer (`diverged_layer`) with the reference.

The reference is `gradwatch.diagnosis.reference()` (its docstring defines it), computed from the
recorded per-layer history alone, with no detector state.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradwatch.diagnosis import reference  # noqa: E402

HEALTHY_STEPS = 2000
F = 10.0  # the reference's departure factor (RunConfig.alert_factor's default)


def healthy_runs(seeds: list[int], steps: int) -> list[dict[str, Any]]:
    from gradwatch.presets import PRESETS

    out = []
    for seed in seeds:
        runs = [{"label": f"default{' bn' if bn else ''}", "config": {"batchnorm": bn}} for bn in (False, True)]
        for preset, variants in (("explosion", ("bn", "bn-l2")), ("bn-depth", ("bn",)),
                                 ("l2-bn", ("bn-l2", "bn", "bn-l2-strong", "plain-l2")),
                                 ("lr-robustness", ("plain-0.02", "bn-0.3", "bn-1")), ("mnist-cnn", ("digits",))):
            runs += [{"label": f"{preset} {v.name}", "preset": preset, "config": dict(v.config)}
                     for v in PRESETS[preset].variants if v.name in variants]
        for r in runs:
            r["config"].update(seed=seed, steps=steps, eval_every=max(steps // 10, 1))
            r["label"] += f" s{seed}"
        out += runs
    for r in out:
        r["set"] = "healthy"
    return out


def exploding_runs(seeds: list[int]) -> list[dict[str, Any]]:
    out = []
    for seed in seeds:
        for depth in (8, 12, 20):
            for lr in (0.1, 0.3, 1.0):
                if (depth, lr) in ((8, 0.3), (20, 0.3)):
                    continue  # lr-robustness plain-0.3 and explosion plain, below
                out.append({"label": f"mlp d{depth} lr{lr} s{seed}", "config": {
                    "model": "mlp", "depth": depth, "width": 128, "init": "kaiming", "lr": lr, "momentum": 0.9,
                    "batchnorm": False, "steps": 400, "eval_every": 0, "seed": seed}})
        for depth in (8, 16):
            for lr in (0.3, 1.0):
                out.append({"label": f"cnn d{depth} lr{lr} s{seed}", "config": {
                    "model": "cnn", "depth": depth, "width": 16, "init": "kaiming", "lr": lr, "momentum": 0.9,
                    "batchnorm": False, "steps": 400, "eval_every": 0, "seed": seed}})
        out.append({"label": f"lr-robustness plain-0.3 s{seed}", "preset": "lr-robustness",
                    "config": {"batchnorm": False, "seed": seed, "eval_every": 0}})
        out.append({"label": f"explosion plain s{seed}", "preset": "explosion",
                    "config": {"seed": seed, "eval_every": 0}})
    for r in out:
        r["set"] = "exploding"
    return out


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train one run here; keep what the benchmark needs of its history and events."""
    import torch
    from gradwatch.config import RunConfig
    from gradwatch.loop import train
    from gradwatch.presets import resolve

    torch.set_num_threads(1)
    cfg = resolve(spec["preset"], spec["config"]) if spec.get("preset") else RunConfig.from_dict(
        {**RunConfig().to_dict(), **spec["config"]})
    grads, steps, loss, alerts, names = [], [], [], [], []
    started = time.perf_counter()

    def emit(e: dict[str, Any]) -> None:
        if e["type"] == "metrics":
            steps.append(e["step"])
            grads.append(e["grad_norm"])
            loss.append(e["loss"])
        elif e["type"] == "alert":
            alerts.append({k: e.get(k) for k in ("step", "kind", "layer", "episode")})
        elif e["type"] == "run.started":
            names.extend(x["name"] for x in e["layers"])

    result = train(cfg, emit)
    return {**spec, "names": names, "steps": steps, "grads": grads, "loss": loss, "alerts": alerts,
            "summary": {k: result.get(k) for k in ("diverged_step", "diverged_layer", "diverged_since", "diverged_top",
                                                   "val_accuracy", "best_val_accuracy", "n_classes")},
            "status": result["status"], "seconds": time.perf_counter() - started}


def replay(r: dict[str, Any]) -> dict[str, Any]:
    """The detector run again over a recorded history (what it sees online, step by step)."""
    from gradwatch.diagnosis import Diagnosis

    dg = Diagnosis(r["names"], F, r["summary"]["n_classes"])
    alerts = []
    for step, g, loss in zip(r["steps"], r["grads"], r["loss"], strict=True):
        g = [math.nan if v is None else v for v in g]
        stats = {"step": step, "loss": math.nan if loss is None else loss, "accuracy": math.nan, "grad_norm": g,
                 "global_grad_norm": math.sqrt(sum(v * v for v in g))}
        alerts += [{k: e.get(k) for k in ("step", "kind", "layer", "episode")} for e in dg.step(stats)
                   if e["type"] == "alert"]
        if dg.reason is not None:
            break
    summary = {**r["summary"], **{k: dg.summary[k] for k in ("diverged_step", "diverged_layer", "diverged_since")}}
    return {**r, "alerts": alerts, "summary": summary}


def cached(spec: dict[str, Any], cache: Path | None) -> dict[str, Any]:
    if cache is None:
        return run_one(spec)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())
    out = run_one(spec)
    path.write_text(json.dumps(out))
    return out


# ---- the reference ------------------------------------------------------------------------


# ---- the report ---------------------------------------------------------------------------


def evaluate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    healthy = [r for r in runs if r["set"] == "healthy"]
    learned = [r for r in healthy if r["status"] == "completed" and not _at_chance(r)]
    steps = sum(len(r["steps"]) for r in learned)
    false = [(r["label"], a["step"], a["kind"], a.get("layer")) for r in learned for a in r["alerts"]
             if a["kind"] in ("grad_spike", "loss_spike")]
    exploding = [r for r in runs if r["set"] == "exploding"]
    diverged = [r for r in exploding if r["status"] == "diverged"]
    rows = []
    for r in diverged:
        d = r["summary"]["diverged_step"]
        ref = reference(r["names"], r["grads"], F)
        spikes = [a for a in r["alerts"] if a["kind"] in ("grad_spike", "loss_spike") and a["step"] < d]
        since = r["summary"]["diverged_since"]
        lead = d - since if since is not None and since < d else (d - spikes[-1]["step"] if spikes else 0)
        rows.append({"label": r["label"], "diverged": d, "alerted": bool(spikes), "lead": lead,
                     "rise": ref["rise"] if ref else 0, "named": r["summary"]["diverged_layer"],
                     "ref": ref["origin"] if ref else None, "ref_top": ref["top"] if ref else [],
                     "ref_first": ref.get("first", []) if ref else []})
    rise2 = [x for x in rows if x["rise"] >= 2]
    return {
        "healthy_runs": len(healthy), "healthy_learned": len(learned), "healthy_steps": steps,
        "dropped_healthy": [(r["label"], r["status"], r["summary"]["val_accuracy"])
                            for r in healthy if r not in learned],
        "false_alerts": false, "false_per_1000": 1000 * len(false) / max(steps, 1),
        "exploding_runs": len(exploding), "diverged": len(diverged),
        "not_diverged": [r["label"] for r in exploding if r["status"] != "diverged"],
        "recall": sum(x["alerted"] for x in rows) / max(len(rows), 1),
        "lead_median": statistics.median([x["lead"] for x in rows]) if rows else None,
        "rise2": len(rise2), "rise2_lead1": sum(x["lead"] >= 1 for x in rise2),
        "agree": sum(x["named"] == x["ref"] for x in rows),
        "agree_first": sum(x["named"] in x["ref_first"] for x in rows),
        "rows": rows,
    }


def _at_chance(r: dict[str, Any]) -> bool:
    from gradwatch.diagnosis import not_learning

    return not_learning(r["summary"]["val_accuracy"], r["summary"]["n_classes"])


def report(ev: dict[str, Any], seconds: float) -> str:
    lines = [
        f"healthy: {ev['healthy_learned']} runs that learned ({ev['healthy_runs']} started), "
        f"{ev['healthy_steps']} steps: {len(ev['false_alerts'])} false alerts = "
        f"{ev['false_per_1000']:.2f} per 1000 steps",
    ]
    lines += [f"  false alert: {x}" for x in ev["false_alerts"][:20]]
    lines += [f"  dropped from the healthy set: {x}" for x in ev["dropped_healthy"]]
    n = ev["diverged"]
    lines += [
        f"exploding: {n} of {ev['exploding_runs']} runs diverged; recall {ev['recall']:.1%} "
        f"(spike alert before the non-finite step); median lead {ev['lead_median']} steps",
        f"  rose over >= 2 steps: {ev['rise2']} runs, lead >= 1 step in {ev['rise2_lead1']}",
        f"  named layer = reference origin: {ev['agree']}/{n}; among the layers the reference sees "
        f"departing first (before its tie-break): {ev['agree_first']}/{n}",
        f"  did not diverge (not counted): {', '.join(ev['not_diverged']) or 'none'}",
        "",
        "| run | non-finite at | alerted | lead | rise | named | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {x['label']} | {x['diverged']} | {'yes' if x['alerted'] else 'NO'} | {x['lead']} | {x['rise']} | "
              f"{x['named']} | {x['ref']} |" for x in ev["rows"]]
    lines.append(f"\n({seconds:.0f} s)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="seeds 0-1, 1000 healthy steps")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per config")
    ap.add_argument("--first-seed", type=int, default=0, help="e.g. 3: seeds the detector was not tuned on")
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--cache", type=Path, help="keep each run's history here; a rerun replays it")
    ap.add_argument("--only", choices=("healthy", "exploding"))
    ap.add_argument("--replay", action="store_true", help="judge the cached histories with today's detector")
    args = ap.parse_args()
    seeds = list(range(args.first_seed, args.first_seed + (2 if args.quick else args.seeds)))
    specs = []
    if args.only != "exploding":
        specs += healthy_runs(seeds, 1000 if args.quick else HEALTHY_STEPS)
    if args.only != "healthy":
        specs += exploding_runs(seeds)
    if args.cache:
        args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(args.procs) as pool:
        runs = list(pool.map(cached, specs, [args.cache] * len(specs)))
    if args.replay:
        runs = [replay(r) for r in runs]
    print(report(evaluate(runs), time.perf_counter() - started))


if __name__ == "__main__":
    main()
