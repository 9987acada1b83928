"""train(cfg, emit, control): the training loop. No I/O: it calls `emit(event)` for every event
(the CLI prints them, the worker sends them, tests append them to a list) and polls `control`
for stop requests and live changes, applied before the next step.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import checkpoint, events, models, optim
from . import data as data_mod
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
    checkpoints: str | Path | None = None,
    resume: str | Path | None = None,
    changes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run cfg to the end (or a stop, or divergence); returns the summary it also emits.

    checkpoints: the folder to keep this run's checkpoints in (every cfg.checkpoint_every steps);
    None keeps none. resume: a checkpoint to start from (a fork): training goes on from its step,
    with `changes` (fields of checkpoint.TRAINING_FIELDS) applied at that first step, each one
    an `intervention` event of source "fork"."""
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

    first = 1
    forked: list[tuple[str, Any, Any]] = []  # (field, parent's value, fork's) applied at the first step
    bn_last = None
    if resume is not None:
        state = checkpoint.load(resume)
        first, bn_last = restore(state, cfg, model, opt, batches, live, device)
        forked = fork_changes(state, changes or {}, model, opt, live)
    keeper = checkpoint.Keeper(checkpoints, cfg.checkpoint_keep) if checkpoints and cfg.checkpoint_every else None

    probe = watch(model, opt, stats_every=cfg.stats_every, first_step=first)
    if bn_last and len(bn_last) == len(probe._bn_last):  # BN drift measured as the parent's
        torch._foreach_copy_(probe._bn_last, [t.to(device) for t in bn_last])
    diagnosis = Diagnosis(probe.names, cfg.alert_factor, ds.n_classes)
    if resume is not None and "detector" in state:  # judged as the parent was (its baselines)
        diagnosis.detector.load(state["detector"])
    summary = diagnosis.summary
    emit(events.run_started(probe.layers, str(device), models.count_params(model), cfg.to_dict(), ds.n_classes))
    for field, old, value in forked:
        emit(events.intervention(first, field, old, value, "fork"))

    def on_step(stats: dict[str, Any]) -> None:
        val = pending_val.pop(stats["step"], None)
        emit(events.metrics(stats, val))
        if val is not None:
            diagnosis.validated(*val)
        for event in diagnosis.step(stats):
            emit(event)
        if diagnosis.reason is not None and not outcome:
            outcome.append(("diverged", diagnosis.reason))
            before = [c for c in (keeper.written if keeper else []) if c <= stats["step"]]
            if before:  # the one to retry from: never thinned away
                keeper.protect(before[-1])
                summary["checkpoint_before_divergence"] = before[-1]

    probe.on_step = on_step
    started = time.perf_counter()
    model.train()
    try:
        for step in range(first, cfg.steps + 1):
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
            if keeper is not None and step > first and step % cfg.checkpoint_every == 0:
                t0 = time.perf_counter()
                # CUDA: the step still in flight is judged first, so the detector's state saved is
                # that of the step before this one, as the weights are (the copy syncs anyway).
                probe.flush()
                if outcome:  # that step diverged: nothing to checkpoint
                    break
                keeper.save(step, snapshot(step, cfg, model, opt, batches, live, probe, diagnosis))
                keeper.seconds += time.perf_counter() - t0

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
        if keeper is not None:
            t0 = time.perf_counter()
            keeper.close()
            keeper.seconds += time.perf_counter() - t0
    if keeper is not None:
        summary["checkpoint_seconds"] = keeper.seconds  # the training thread's share (copies, waits)
        if keeper.error:
            summary["checkpoint_error"] = keeper.error
    for event in diagnosis.close():
        emit(event)

    status, reason = outcome[0] if outcome else ("completed", None)
    summary["seconds"] = time.perf_counter() - started
    ran = summary["step"] - first + 1 if summary.get("step") else 0
    summary["steps_per_s"] = ran / summary["seconds"] if summary["seconds"] > 0 else None
    emit(events.run_finished(status, reason, summary))
    return {"status": status, "reason": reason, **summary}


# ---- checkpoints: what a fork starts from ------------------------------------------------

# Fields that must match between a checkpoint and the run that resumes from it: all but those a
# fork may change (and the device: the state is moved to the fork's).
SAME_SHAPE = tuple(f.name for f in fields(RunConfig) if f.name not in (*checkpoint.FORK_FIELDS, "device"))


def snapshot(step: int, cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer,
             batches: data_mod.Batches, live: dict[str, Any], probe: Any, diagnosis: Diagnosis) -> dict[str, Any]:
    """The state step `step` runs from, copied to the CPU (see trainer/checkpoint.py). With it the
    alert detector's baselines, so that a fork judges its steps as its parent would have (a fresh
    one, knowing only the fork's first steps, blamed another layer for the same blow-up)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return checkpoint.cpu_copy({
        "format": checkpoint.FORMAT, "step": step, "config": cfg.to_dict(), "live": dict(live),
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "rng_cpu": torch.get_rng_state(), "rng_cuda": cuda,
        "batches": {"generator": batches.gen.get_state(), "perm": batches.perm, "pos": batches.pos},
        "bn_last": list(probe._bn_last),
        "detector": diagnosis.detector.state(),
    })


def restore(state: dict[str, Any], cfg: RunConfig, model: nn.Module, opt: torch.optim.Optimizer,
            batches: data_mod.Batches, live: dict[str, Any], device: torch.device) -> tuple[int, list]:
    """Put a checkpoint's state into a freshly built run; returns (its step, BN's last statistics)."""
    parent = state["config"]
    for field in SAME_SHAPE:  # (a field newer than the checkpoint: as the run has it)
        if parent.get(field, getattr(cfg, field)) != getattr(cfg, field):
            raise checkpoint.CheckpointError(f"the checkpoint is of another run shape: {field} is "
                                             f"{parent.get(field)!r} there, {getattr(cfg, field)!r} here")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])  # its param groups carry the parent's lr, l2, momentum
    live.update(state["live"])
    torch.set_rng_state(state["rng_cpu"])
    if state["rng_cuda"] and device.type == "cuda" and len(state["rng_cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["rng_cuda"])
    b = state["batches"]
    batches.gen.set_state(b["generator"])
    batches.perm, batches.pos = b["perm"].to(batches.device), int(b["pos"])
    return int(state["step"]), list(state["bn_last"])


def fork_changes(state: dict[str, Any], changes: dict[str, Any], model: nn.Module,
                 opt: torch.optim.Optimizer, live: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """Apply a fork's changes over the parent's state; returns (field, old, new) of each."""
    done = []
    for field, value in changes.items():
        check_field(field, value)
        if field == "l2":
            old = optim.current_l2(opt)
            optim.set_l2(opt, value)
        elif field == "lr":
            old = opt.param_groups[0]["lr"]
            optim.set_lr(opt, value)
        elif field == "momentum":
            old = opt.param_groups[0].get("momentum", state["config"]["momentum"])
            for g in opt.param_groups:
                if "momentum" in g:
                    g["momentum"] = value
        elif field == "grad_clip":
            old = live["grad_clip"]
        elif field == "dropout":  # the model was built with the fork's dropout; say what it was
            old = state["config"]["dropout"]
        else:
            raise ValueError(f"{field} is not a training setting a fork changes")
        if field in live:
            live[field] = value
        if old != value:
            done.append((field, old, value))
    return done
