"""What does each integration cost a training step? Lightning and transformers, with and without
gradwatch's callback, in the same process, interleaved.

    .venv/bin/python bench/integration_overhead.py                 # the figures in docs/benchmarks.md
    .venv/bin/python bench/integration_overhead.py --rounds 3 --steps 40   # a quick look
    .venv/bin/python bench/integration_overhead.py --fresh --rounds 16 --steps 40   # a process per fit

A real server (`python -m gradwatch serve`, its own process) receives the runs.

  lightning     an MLP (256 -> 1024 -> 1024 -> 10, batch 256, SGD with momentum) under `lightning.Trainer`
  transformers  a BERT built from its config (2 layers x 64 units, sequences of 32 tokens,
                batch 32, the Trainer's AdamW) under `transformers.Trainer`

Two methods:

- `--method blocks` (the default; the figures in docs/benchmarks.md): one fit per round with the
  callback attached, switched on and off every --block optimizer steps (the round's first block
  on or off by turns). Off, each of the callback's hooks and the probe's optimizer hooks return at
  once: the step is the loop without gradwatch, a few seconds away from the steps with it, in the
  same process, on the same model, data and allocator. The first --settle steps of each block are
  left out (the sender thread is still sending the last block's steps, up to its linger, 0.1 s,
  after them). The ratio with/without is the median of the "on" steps over the median of the
  "off" steps within a round (a slow spell of the machine lasts longer than a block), reported as
  the median over rounds with its interquartile range.
- `--method fits`: every (integration, with/without) pair fits once per round, in a shuffled
  order, on a fresh copy of the same model; `--fresh` runs each fit in a process of its own. A
  fit's step time can sit in one of two modes on this VM (32-39 or 47-53 ms for the BERT), so
  this needs many rounds to say anything within 5%.

A step is timed between two consecutive step ends (Lightning's on_train_batch_end, the Trainer's
on_step_end) by two clocks: the wall clock (everything the callback adds in the training thread,
and its sender thread's competition for the cores and the interpreter) and this process's CPU time
(all its threads, the sender's included). The first 5 steps of each fit are left out (warm-up).
Torch runs one thread (--threads), as the test suite does on 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

WARMUP = 5
GATE = {"on": True}  # --method blocks: gradwatch's hooks run only while this is on

# The hooks that --method blocks switches: the probe's (class-wide, before any probe exists) and
# each callback's own (per instance).
CALLBACK_HOOKS = {"lightning": ("on_before_backward", "on_before_optimizer_step", "on_train_batch_end"),
                  "transformers": ("_keep_loss", "on_pre_optimizer_step", "on_step_end")}


def gated(method: Any) -> Any:
    def hook(*args: Any, **kwargs: Any) -> Any:
        return method(*args, **kwargs) if GATE["on"] else None
    return hook


def gate_probe() -> None:
    from gradwatch.probe import Probe

    for name in ("_pre_step", "_post_step", "grads_ready"):
        setattr(Probe, name, gated(getattr(Probe, name)))


def gate_callback(name: str, callback: Any) -> Any:
    for hook in CALLBACK_HOOKS[name]:
        setattr(callback, hook, gated(getattr(callback, hook)))
    return callback


class Switch:
    """Called at each step end by the fit's clock: turns gradwatch on or off every `block` steps
    and remembers which steps ran with it."""

    def __init__(self, block: int, first_on: bool) -> None:
        self.block, self.first_on, self.ends = block, first_on, 0
        self.on: list[bool] = []  # per step, from the first step end on: did it run with gradwatch?
        GATE["on"] = first_on

    def __call__(self) -> None:
        self.on.append(GATE["on"])
        self.ends += 1
        GATE["on"] = self.first_on == ((self.ends // self.block) % 2 == 0)


def start_server(data_dir: Path, token: str) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "GRADWATCH_TOKEN": token, "GRADWATCH_MAX_EXTERNAL": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "gradwatch", "serve", "--port", str(port), "--data-dir",
                             str(data_dir), "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url + "/api/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not start")


def steps_of(ends: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, cpu) seconds of each step after the warm-up."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(ends, ends[1:], strict=False)][WARMUP:]


def split_blocks(ends: list[tuple[float, float]], switch: Switch, settle: int) -> tuple[list, list]:
    """(on, off) (wall, cpu) step times of a --method blocks fit, each block's first `settle` left out.
    Step k (k >= 1) runs between step ends k-1 and k, with the gate as switch.on[k] says."""
    on: list[tuple[float, float]] = []
    off: list[tuple[float, float]] = []
    run = 0
    for k in range(1, len(ends)):
        run = run + 1 if switch.on[k] == switch.on[k - 1] else 0
        if k > WARMUP and run >= settle:
            (on if switch.on[k] else off).append((ends[k][0] - ends[k - 1][0], ends[k][1] - ends[k - 1][1]))
    return on, off


# ---- Lightning -------------------------------------------------------------------------

def lightning_fit(steps: int, callback: Any, tick: Any = None) -> list[tuple[float, float]]:
    import lightning.pytorch as pl
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    class MLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(256, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                                     nn.Linear(1024, 10))

        def training_step(self, batch: Any, i: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)

    ends: list[tuple[float, float]] = []

    class Clock(pl.Callback):
        def on_train_batch_end(self, *args: Any) -> None:
            ends.append((time.perf_counter(), time.process_time()))
            if tick:
                tick()

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256 * steps, 256, generator=g), torch.randint(0, 10, (256 * steps,), generator=g))
    torch.manual_seed(0)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, max_steps=steps,
                         callbacks=[Clock()] + ([callback] if callback else []))
    trainer.fit(MLP(), DataLoader(data, batch_size=256))
    return ends


def lightning_callback(url: str, token: str) -> Any:
    from gradwatch.integrations.lightning import GradwatchCallback

    return GradwatchCallback(url, token=token, name="bench-lightning")


# ---- transformers ----------------------------------------------------------------------

def transformers_fit(steps: int, callback: Any, tick: Any = None) -> list[tuple[float, float]]:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments

    ends: list[tuple[float, float]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            ends.append((time.perf_counter(), time.process_time()))
            if tick:
                tick()

    class Tokens(torch.utils.data.Dataset):
        def __init__(self, n: int) -> None:
            g = torch.Generator().manual_seed(0)
            self.ids = torch.randint(0, 512, (n, 32), generator=g)
            self.labels = torch.randint(0, 2, (n,), generator=g)

        def __len__(self) -> int:
            return len(self.labels)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": self.ids[i], "labels": self.labels[i]}

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=256,
                                                     max_position_embeddings=32, num_labels=2))
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True,
                                 logging_strategy="no", max_steps=steps, per_device_train_batch_size=32)
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its summary: keep stdout the table
            Trainer(model=model, args=args, train_dataset=Tokens(32 * steps),
                    callbacks=[Clock()] + ([callback] if callback else [])).train()
    return ends


def transformers_callback(url: str, token: str) -> Any:
    from gradwatch.integrations.transformers import GradwatchCallback

    return GradwatchCallback(url, token=token, name="bench-transformers")


INTEGRATIONS = {"lightning": (lightning_fit, lightning_callback),
                "transformers": (transformers_fit, transformers_callback)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=("blocks", "fits"), default="blocks")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per fit (blocks: 205, fits: 80)")
    ap.add_argument("--block", type=int, default=20, help="--method blocks: steps per on/off block")
    ap.add_argument("--settle", type=int, default=6, help="--method blocks: each block's first steps left out")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=sorted(INTEGRATIONS), action="append")
    ap.add_argument("--fresh", action="store_true",
                    help="each fit in a process of its own (a process's step time can sit in one of two modes)")
    ap.add_argument("--one", nargs=4, metavar=("NAME", "WATCHED", "URL", "TOKEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.steps is None:
        args.steps = 205 if args.method == "blocks" else 80
    if args.fresh and args.method != "fits":
        ap.error("--fresh goes with --method fits")
    torch.set_num_threads(args.threads)
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import transformers

    transformers.logging.set_verbosity_error()

    if args.one:  # a child of --fresh: one fit, its step times on stdout
        name, watched, url, token = args.one
        fit, make_callback = INTEGRATIONS[name]
        with contextlib.redirect_stdout(sys.stderr):
            steps = steps_of(fit(args.steps, make_callback(url, token) if watched == "1" else None))
        print(json.dumps(steps))
        return 0

    names = args.only or sorted(INTEGRATIONS)
    token = secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as data:
        server, url = start_server(Path(data), token)
        try:
            times: dict[tuple[str, bool], list[list[tuple[float, float]]]] = {
                (n, w): [] for n in names for w in (False, True)}
            order = list(times)
            if args.method == "blocks":
                gate_probe()
            for r in range(args.rounds if args.method == "fits" else 0):
                random.Random(r).shuffle(order)
                for name, watched in order:
                    fit, make_callback = INTEGRATIONS[name]
                    if args.fresh:
                        out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--threads",
                                              str(args.threads), "--one", name, str(int(watched)), url, token],
                                             capture_output=True, text=True, check=True).stdout
                        times[(name, watched)].append([tuple(s) for s in json.loads(out.splitlines()[-1])])
                    else:
                        times[(name, watched)].append(
                            steps_of(fit(args.steps, make_callback(url, token) if watched else None)))
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
            for r in range(args.rounds if args.method == "blocks" else 0):
                for name in names:
                    fit, make_callback = INTEGRATIONS[name]
                    switch = Switch(args.block, first_on=r % 2 == 0)
                    ends = fit(args.steps, gate_callback(name, make_callback(url, token)), switch)
                    on, off = split_blocks(ends, switch, args.settle)
                    times[(name, True)].append(on)
                    times[(name, False)].append(off)
                print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
        finally:
            server.terminate()
            server.wait(30)

    load = os.getloadavg()[0]
    how = (f"blocks of {args.block} steps on/off, first {args.settle} of each left out" if args.method == "blocks"
           else "a process per fit" if args.fresh else "fits interleaved")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs (load average {load:.1f} at the end), torch "
          f"{torch.__version__}, {args.threads} thread(s), {args.rounds} rounds x {args.steps} steps per fit "
          f"(first {WARMUP} left out), --method {args.method}: {how}")
    print(f"{'integration':<14}{'clock':<7}{'without (ms)':>14}{'with (ms)':>12}{'ratio':>8}{'ratio IQR':>16}")
    for name in names:
        for k, clock in enumerate(("wall", "cpu")):
            without = [[s[k] for s in fit] for fit in times[(name, False)]]
            with_ = [[s[k] for s in fit] for fit in times[(name, True)]]
            ratios = sorted(statistics.median(w) / statistics.median(o) for o, w in zip(without, with_, strict=True))
            q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
            print(f"{name:<14}{clock:<7}{1e3 * statistics.median(sum(without, [])):>14.2f}"
                  f"{1e3 * statistics.median(sum(with_, [])):>12.2f}{statistics.median(ratios):>8.3f}"
                  f"{f'{q[0]:.3f}-{q[2]:.3f}':>16}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
