"""What does watching every layer every step cost? Median step time per monitoring mode.

    .venv/bin/python bench/probe_overhead.py            # CPU, the sizes recorded in docs/benchmarks.md
    .venv/bin/python bench/probe_overhead.py --device cuda --repeats 30

Modes, each on its own copy of the same model (same init, same fixed batch), interleaved:

  none   no monitoring: forward, loss, zero_grad, backward, optimizer.step()
  item   per-parameter gradient norms read with `.item()` every step (the usual hand-rolled way)
  item-all  the probe's per-step set done the same naive way: gradient, weight and update norm
         of every parameter (weights cloned before the step), each read with `.item()`
  bare   the floor for any observer of the per-step set in eager PyTorch: gradient and weight
         norms of every parameter before the step and its momentum buffer's norm after it (the
         SGD update is lr x buffer), one `_foreach_norm` per set, one host copy; no hooks, no
         bookkeeping, no statistics every 10th step
  probe  gradwatch's probe, `watch(model, opt, stats_every=10)`: grad norm, weight norm,
         update ratio of every parameter and the loss every step (one host transfer), plus
         activations / BN drift / effective lr every 10th step; `latest()` read every step

Steps are timed one by one (synchronising the device after each when it is CUDA). Each round
runs every mode, in a shuffled order, for about --block seconds each; the ratio to `none` is taken
within each round (so slow spells on a shared machine hit both sides of it) and reported as the
median over rounds with its interquartile range. Also shown: the median step over all steps, and
the mean step (it includes the every-10th-step statistics, which medians leave out).

On a shared CPU, --threads 1 (the default) keeps other processes from stalling torch's thread
pool mid-op, and --clock cpu (the default there) times each step by this thread's CPU time, which
other processes' use of the cores does not inflate (with one thread every op runs on it). On CUDA
the wall clock is used, after a synchronize.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradwatch import models, optim  # noqa: E402
from gradwatch.config import RunConfig  # noqa: E402
from gradwatch.data import MODULUS  # noqa: E402
from gradwatch.probe import watch  # noqa: E402

MODES = ("none", "item", "item-all", "bare", "probe")


def make(cfg: RunConfig, mode: str, device: torch.device):  # noqa: ANN201
    torch.manual_seed(0)
    in_shape, n_classes = ((3,), MODULUS) if cfg.model == "transformer" else ((1, 8, 8), 10)
    model = models.build(cfg, in_shape, n_classes).to(device)
    opt = optim.build(model, cfg)
    probe = watch(model, opt, stats_every=10) if mode == "probe" else None
    params = [p for p in model.parameters() if p.requires_grad]
    return model, opt, probe, params


def step(mode: str, model: nn.Module, opt: torch.optim.Optimizer, probe, params, x, y) -> None:  # noqa: ANN001
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    before = None
    if mode == "item":
        norms = [p.grad.norm().item() for p in params]  # one host sync per parameter
        assert len(norms) == len(params)
    elif mode == "item-all":
        norms = [p.grad.norm().item() for p in params] + [p.detach().norm().item() for p in params]
        before = [p.detach().clone() for p in params]
    elif mode == "bare":
        with torch.no_grad():
            pre = torch._foreach_norm([p.grad for p in params] + params)
    elif mode == "probe":
        probe.record(loss)
    opt.step()
    if before is not None:
        norms += [(b - p.detach()).norm().item() for b, p in zip(before, params, strict=True)]
    if mode == "bare":
        with torch.no_grad():
            bufs = [opt.state[p]["momentum_buffer"] for p in params]
            torch.stack(pre + torch._foreach_norm(bufs)).tolist()
    if mode == "probe":
        probe.latest()


def bench(name: str, cfg: RunConfig, batch: int, device: torch.device, repeats: int, block: float,
          warmup: int, clock: Callable[[], float]) -> dict[str, list[float]]:
    g = torch.Generator().manual_seed(0)
    if cfg.model == "transformer":  # the modadd task's shape: 3 tokens in, one of MODULUS classes out
        x = torch.randint(0, MODULUS, (batch, 3), generator=g).to(device)
        y = torch.randint(0, MODULUS, (batch,), generator=g).to(device)
    else:
        x = torch.randn(batch, 1, 8, 8, generator=g).to(device)
        y = torch.randint(0, 10, (batch,), generator=g).to(device)
    setups = {m: make(cfg, m, device) for m in MODES}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for m in MODES:
        for _ in range(warmup):
            step(m, *setups[m], x, y)
    sync()
    t0 = time.perf_counter()
    for _ in range(3):
        step("none", *setups["none"], x, y)
    sync()
    per_step = (time.perf_counter() - t0) / 3
    steps = max(3, round(block / per_step))
    times: dict[str, list[float]] = {m: [] for m in MODES}
    ratios: dict[str, list[float]] = {m: [] for m in MODES}  # per round: mode median / none median
    order = random.Random(0)
    for _ in range(repeats):
        modes = list(MODES)
        order.shuffle(modes)  # no mode always runs right after another
        block_median = {}
        for m in modes:
            model, opt, probe, params = setups[m]
            block = []
            for _ in range(steps):
                t0 = clock()
                step(m, model, opt, probe, params, x, y)
                sync()
                block.append(clock() - t0)
            times[m] += block
            block_median[m] = statistics.median(block)
        for m in MODES:
            ratios[m].append(block_median[m] / block_median["none"])
    n_params = len(setups["none"][3])
    print(f"\n{name}: {n_params} parameter tensors, batch {batch}, "
          f"{repeats} rounds x {steps} steps per mode")
    print(f"  {'mode':<8} {'median step':>12} {'ratio (IQR)':>22} {'mean step':>12} {'ratio':>7}")
    med = {m: statistics.median(t) for m, t in times.items()}
    mean = {m: statistics.fmean(t) for m, t in times.items()}
    for m in MODES:
        q1, q2, q3 = statistics.quantiles(ratios[m], n=4)
        print(f"  {m:<8} {med[m] * 1e3:>9.3f} ms {q2:>7.3f}x ({q1:.3f}-{q3:.3f}) "
              f"{mean[m] * 1e3:>9.3f} ms {mean[m] / mean['none']:>6.3f}x")
    for m in MODES:
        if setups[m][2] is not None:
            setups[m][2].close()
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=60, help="rounds")
    ap.add_argument("--block", type=float, default=0.05, help="seconds per mode per round (sets the step count)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--clock", choices=("wall", "cpu"), default=None,
                    help="wall: perf_counter; cpu: this thread's CPU time (default on the CPU with 1 thread)")
    ap.add_argument("--only", choices=("mlp", "mlp-wide", "mlp-deep", "cnn", "resnet18", "resnet34",
                                       "transformer", "transformer-post"), default=None)
    ap.add_argument("--batch", type=int, default=None, help="batch size for every case (default: each its own)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("cpu" if device.type == "cpu" and args.threads == 1 else "wall")
    clock = time.thread_time if clock_name == "cpu" else time.perf_counter
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
             f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
          + f", clock: {clock_name}")
    cases = {
        "mlp": ("MLP 4x64 (the default run), ReLU, SGD+momentum",
                RunConfig(model="mlp", depth=4, width=64), 64),
        "mlp-wide": ("MLP 8x256, ReLU, SGD+momentum",
                     RunConfig(model="mlp", depth=8, width=256), 128),
        "mlp-deep": ("MLP 20x128 + BN (the explosion preset's BN variant), ReLU, SGD+momentum",
                     RunConfig(model="mlp", depth=20, width=128, batchnorm=True, init="kaiming"), 64),
        "cnn": ("CNN 20 blocks conv3x3+BN+ReLU, width 32, 8x8 input, SGD+momentum",
                RunConfig(model="cnn", depth=20, width=32, batchnorm=True), 32),
        "resnet18": ("ResNet-18 + BN (torchvision's, small-image stem), 8x8 input, SGD+momentum",
                     RunConfig(model="resnet", depth=18, batchnorm=True), 8),
        "resnet34": ("ResNet-34 + BN, 8x8 input, SGD+momentum",
                     RunConfig(model="resnet", depth=34, batchnorm=True), 4),
        "transformer": ("Transformer 4 blocks x 128, pre-LN, 3 tokens (modadd), SGD+momentum",
                        RunConfig(model="transformer", dataset="modadd", depth=4, width=128), 256),
        "transformer-post": ("Transformer 4 blocks x 128, post-LN, 3 tokens (modadd), SGD+momentum",
                             RunConfig(model="transformer", dataset="modadd", depth=4, width=128,
                                       layernorm="post"), 256),
    }
    for key, (name, cfg, batch) in cases.items():
        if args.only in (None, key):
            bench(name, cfg, args.batch or batch, device, args.repeats, args.block, args.warmup, clock)


if __name__ == "__main__":
    main()
