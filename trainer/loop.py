"""train(cfg, emit, control): the training loop. No I/O: it calls `emit(event)` for every event
(the CLI prints them, the worker sends them, tests append them to a list) and polls `control`
for stop requests and live changes, applied before the next step.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as data_mod
from . import events, models, optim
from .config import LIVE_FIELDS, RunConfig, check_field
from .diagnosis import Diagnosis
from .probe import watch

Emit = Callable[[dict[str, Any]], None]


class Control:
    """Thread-safe mailbox from the outside world to the loop (stop, live changes)."""

    def __init__(self) -> None:
        self._q: queue.SimpleQueue[tuple[str, Any, str]] = queue.SimpleQueue()
        self.stop_requested = False

    def stop(self) -> None:
        self.stop_requested = True

    def set(self, source: str = "api", **changes: Any) -> None:
        for field, value in changes.items():
            if field not in LIVE_FIELDS:
                raise ValueError(f"{field} cannot be changed on a running run (only {', '.join(LIVE_FIELDS)})")
            check_field(field, value)
            self._q.put((field, value, source))

    def pending(self) -> list[tuple[str, Any, str]]:
        out = []
        while True:
            try:
                out.append(self._q.get_nowait())
            except queue.Empty:
                return out


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no CUDA device is available; use device='auto' or 'cpu'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def train(
    cfg: RunConfig,
    emit: Emit,
    control: Control | None = None,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Run cfg to the end (or a stop, or divergence); returns the summary it also emits."""
    control = control or Control()
    device = resolve_device(cfg.device)
    # Vanishing activations produce denormal floats, which run ~4x slower on CPUs; flush them.
    torch.set_flush_denormal(True)
    torch.manual_seed(cfg.seed)
    ds = data_mod.load(cfg.dataset, device, data_dir, cfg.seed)
    model = models.build(cfg, ds.shape, ds.n_classes).to(device)
    if cfg.model == "cnn" and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = optim.build(model, cfg)
    batches = data_mod.Batches(len(ds.x_train), cfg.batch_size, cfg.seed, device)
    amp = cfg.amp and device.type == "cuda"
    live = {"l2": cfg.l2, "lr": cfg.lr, "grad_clip": cfg.grad_clip}
    pending_val: dict[int, tuple[float, float]] = {}
    outcome: list[tuple[str, str | None]] = []  # set by on_step when the run must end

    probe = watch(model, opt, stats_every=cfg.stats_every)
    diagnosis = Diagnosis(probe.names, cfg.alert_factor, ds.n_classes)
    summary = diagnosis.summary
    emit(events.run_started(probe.layers, str(device), models.count_params(model), cfg.to_dict(), ds.n_classes))

    def on_step(stats: dict[str, Any]) -> None:
        val = pending_val.pop(stats["step"], None)
        emit(events.metrics(stats, val))
        if val is not None:
            diagnosis.validated(*val)
        for event in diagnosis.step(stats):
            emit(event)
        if diagnosis.reason is not None and not outcome:
            outcome.append(("diverged", diagnosis.reason))

    probe.on_step = on_step
    started = time.perf_counter()
    model.train()
    try:
        for step in range(1, cfg.steps + 1):
            if control.stop_requested:
                outcome.append(("stopped", "stopped on request"))
            if outcome:
                break
            for field, value, source in control.pending():
                old = live[field]
                live[field] = value
                if field == "l2":
                    optim.set_l2(opt, value)
                    value = optim.current_l2(opt)  # read back: what the optimizer will use
                elif field == "lr":
                    optim.set_lr(opt, value)
                    value = opt.param_groups[0]["lr"]
                live[field] = value
                emit(events.intervention(step, field, old, value, source))

            idx = batches.next()
            x, y = ds.x_train[idx], ds.y_train[idx]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                logits = model(x)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            probe.record(loss, (logits.argmax(1) == y).float().mean())
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                # Validation of the weights this step's loss saw (as weight_norm is): before the update.
                vl, va = models.evaluate(model, ds.x_val, ds.y_val)
                pending_val[step] = (vl.item(), va.item())  # sync point, eval steps only
            if live["grad_clip"] > 0:
                probe.clip_(live["grad_clip"])
            opt.step()  # the probe's hooks run here; on_step fires for every step read back
        probe.flush()  # the last step's values (CUDA: still in flight)
        if not outcome:
            vl, va = models.evaluate(model, ds.x_val, ds.y_val)
            diagnosis.validated(vl.item(), va.item())  # the trained weights, once
    finally:
        probe.close()
    for event in diagnosis.close():
        emit(event)

    status, reason = outcome[0] if outcome else ("completed", None)
    summary["seconds"] = time.perf_counter() - started
    summary["steps_per_s"] = summary["step"] / summary["seconds"] if summary["seconds"] > 0 else None
    emit(events.run_finished(status, reason, summary))
    return {"status": status, "reason": reason, **summary}
