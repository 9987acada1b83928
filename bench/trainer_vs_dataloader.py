"""Steps per second of the built-in trainer against a plain PyTorch `DataLoader` loop training the
same CNN on the same data (issue 3: target >= 2x on a GPU).

    .venv/bin/python bench/trainer_vs_dataloader.py                 # the CPU here
    python bench/trainer_vs_dataloader.py --device cuda             # on a GPU machine

The network is the `mnist-cnn` preset on the bundled `digits` (4 blocks of conv3x3 + BN + ReLU,
global average pool, a linear layer; SGD + momentum, L2 on weights), batch 128. Modes, each on a
fresh model with the same seed, one after another, repeated:

  trainer     `gradwatch.loop.train()`: the dataset resident on the device, batches drawn there,
              the probe watching every layer every step (one host transfer), events built for
              the server (sent nowhere here); no evaluation inside the timed steps
  dataloader  the way it is usually written: a `TensorDataset` on the CPU, `DataLoader(shuffle=True)`,
              each batch moved to the device, and the loss read with `.item()` every step for
              the log line
  dataloader-quiet  the same without the per-step `.item()` (the loss read every 100 steps)

Steps/s is over the steps after the first `--warmup`, from the time of the first timed step to
the last (the trainer's own step times, from its events; synchronised before each read on CUDA).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gradwatch import data as data_mod  # noqa: E402
from gradwatch import models, optim  # noqa: E402
from gradwatch.loop import train  # noqa: E402
from gradwatch.presets import resolve  # noqa: E402


def config(device: str, steps: int):  # noqa: ANN201
    return resolve("mnist-cnn", {"dataset": "digits", "steps": steps, "eval_every": steps * 10,
                                 "device": device, "seed": 0})


def run_trainer(device: str, steps: int, warmup: int) -> float:
    times: list[float] = []

    def emit(event: dict) -> None:
        if event["type"] == "metrics":
            times.append(time.perf_counter())

    summary = train(config(device, steps), emit)
    assert summary["step"] == steps, summary
    timed = times[warmup:]
    return (len(timed) - 1) / (timed[-1] - timed[0])


def run_dataloader(device: str, steps: int, warmup: int, quiet: bool) -> float:
    cfg = config(device, steps)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    ds = data_mod.load(cfg.dataset, torch.device("cpu"), None, cfg.seed)
    model = models.build(cfg, ds.shape, ds.n_classes).to(dev)
    opt = optim.build(model, cfg)
    loader = DataLoader(TensorDataset(ds.x_train, ds.y_train), batch_size=cfg.batch_size, shuffle=True,
                        drop_last=True)
    step, start, log = 0, None, []
    while step < steps:
        for xb, yb in loader:
            xb, yb = xb.to(dev), yb.to(dev)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if not quiet or step % 100 == 0:
                log.append(loss.item())  # the log line; a device sync on CUDA
            if step == warmup:
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
            if step == steps:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = torch.cuda.get_device_name() if args.device == "cuda" else (platform.processor() or platform.machine())
    print(f"torch {torch.__version__}, device {args.device} ({name}), {torch.get_num_threads()} CPU threads; "
          f"mnist-cnn on digits, batch {config(args.device, 1).batch_size}, {args.steps} steps "
          f"({args.warmup} untimed), {args.repeats} repeats")
    modes = {
        "trainer": lambda: run_trainer(args.device, args.steps, args.warmup),
        "dataloader": lambda: run_dataloader(args.device, args.steps, args.warmup, quiet=False),
        "dataloader-quiet": lambda: run_dataloader(args.device, args.steps, args.warmup, quiet=True),
    }
    rates: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for m, fn in modes.items():
            rates[m].append(fn())
    base = statistics.median(rates["dataloader"])
    for m, r in rates.items():
        med = statistics.median(r)
        print(f"  {m:<17} {med:8.1f} steps/s  (runs: {', '.join(f'{x:.0f}' for x in r)})  "
              f"{med / base:.2f}x the DataLoader loop")


if __name__ == "__main__":
    main()
