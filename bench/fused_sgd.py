"""What if the probe took the norms inside SGD's own step? A measurement for a decision, not a
feature: gradwatch does not do this (docs/benchmarks.md, "Probe overhead").

    .venv/bin/python bench/fused_sgd.py            # the three MLPs of bench/probe_overhead.py

`watch()` hooks someone else's optimizer, so it reads every gradient, weight and momentum buffer
in a pass of its own after the step has left them out of cache. A step that takes each
parameter's norms while it updates that parameter (gradient and weight before, buffer after)
reads them hot. Modes, each on its own copy of the same model, interleaved as in
bench/probe_overhead.py (60 rounds by default, thread CPU time, one torch thread):

  none        torch.optim.SGD (momentum 0.9, as the trainer builds it), no monitoring
  probe       the same, watched by gradwatch's probe (`watch(model, opt)`)
  own         this script's per-parameter SGD loop, the same operations as torch's
              single-tensor SGD (checked: bit-identical weights), no norms
  own+norms   that loop taking the three norms of each parameter as it goes, one host copy

`own+norms / own` is what the in-step norms cost on the same update code; `own+norms / none` is
what a person would see against stock SGD (the loop itself is leaner than torch's SGD step).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradwatch import models, optim  # noqa: E402
from gradwatch.config import RunConfig  # noqa: E402
from gradwatch.probe import watch  # noqa: E402

CASES = {
    "mlp": ("MLP 4x64 (the default run)", RunConfig(model="mlp", depth=4, width=64), 64),
    "mlp-wide": ("MLP 8x256", RunConfig(model="mlp", depth=8, width=256), 128),
    "mlp-deep": ("MLP 20x128 + BN", RunConfig(model="mlp", depth=20, width=128, batchnorm=True, init="kaiming"), 64),
}
MODES = ("none", "probe", "own", "own+norms")


@torch.no_grad()
def own_step(opt: torch.optim.SGD, norms: bool) -> list[float] | None:
    """Plain SGD with momentum, one parameter at a time (torch's `_single_tensor_sgd` without
    nesterov/maximize), optionally taking ‖g‖, ‖w‖ before and ‖buf‖ after each update."""
    out = []
    for group in opt.param_groups:
        lr, momentum, wd, dampening = group["lr"], group["momentum"], group["weight_decay"], group["dampening"]
        for p in group["params"]:
            g = p.grad
            if norms:
                out += [torch.linalg.vector_norm(g), torch.linalg.vector_norm(p)]
            d = g if wd == 0 else g.add(p, alpha=wd)
            state = opt.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(d).detach()
            else:
                buf.mul_(momentum).add_(d, alpha=1 - dampening)
            p.add_(buf, alpha=-lr)
            if norms:
                out.append(torch.linalg.vector_norm(buf))
    return torch.stack(out).tolist() if norms else None


def bench(key: str, repeats: int) -> None:
    name, cfg, batch = CASES[key]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 1, 8, 8, generator=g), torch.randint(0, 10, (batch,), generator=g)
    setups = {}
    for mode in MODES:
        torch.manual_seed(0)
        model = models.build(cfg, (1, 8, 8), 10)
        opt = optim.build(model, cfg)
        setups[mode] = (model, opt, watch(model, opt) if mode == "probe" else None)

    def step(mode: str) -> None:
        model, opt, probe = setups[mode]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if probe is not None:
            probe.record(loss)
        if mode.startswith("own"):
            own_step(opt, norms=mode == "own+norms")
        else:
            opt.step()
        if probe is not None:
            probe.latest()

    for mode in MODES:
        for _ in range(10):
            step(mode)
    same = all(torch.equal(a, b) for a, b in zip(setups["none"][0].parameters(), setups["own"][0].parameters(),
                                                 strict=True))
    t0 = time.perf_counter()
    step("none")
    steps = max(3, round(0.05 / (time.perf_counter() - t0)))
    ratios: dict[str, list[float]] = {m: [] for m in MODES}
    medians: dict[str, list[float]] = {m: [] for m in MODES}
    order = random.Random(0)
    for _ in range(repeats):
        modes = list(MODES)
        order.shuffle(modes)
        med = {}
        for mode in modes:
            block = []
            for _ in range(steps):
                t0 = time.thread_time()
                step(mode)
                block.append(time.thread_time() - t0)
            med[mode] = statistics.median(block)
            medians[mode].append(med[mode])
        for mode in MODES:
            ratios[mode].append(med[mode] / med["none"])
        ratios.setdefault("own+norms / own", []).append(med["own+norms"] / med["own"])
    print(f"\n{name}, batch {batch}: {repeats} rounds x {steps} steps; own loop = torch SGD bit for bit: {same}")
    for mode, rs in ratios.items():
        step_ms = f"{statistics.median(medians[mode]) * 1e3:7.3f} ms" if mode in medians else " " * 10
        print(f"  {mode:<16} {step_ms}  {statistics.median(rs):.3f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--only", choices=tuple(CASES), default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, cpu, 1 thread, clock: thread CPU time")
    for key in CASES:
        if args.only in (None, key):
            bench(key, args.repeats)


if __name__ == "__main__":
    main()
