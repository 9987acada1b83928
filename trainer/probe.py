"""Per-layer statistics for any PyTorch loop, one host transfer per step.

    from gradwatch.probe import watch
    probe = watch(model, optimizer)     # hooks optimizer.step(); nothing else to call
    ...train as usual...
    probe.latest()                      # last completed step's statistics, never blocks
    probe.close()                       # removes every hook (optimizer and forward hooks)

Every step, around `optimizer.step()`, on the parameters' device: every parameter's gradient
norm and weight norm (before the step; on the host, their ratio ‖g‖/‖w‖), the norm of the update
the optimizer applied (‖w_before − w_after‖), and the learning rate of the optimizer's first
parameter group. The per-layer statistics go out under the names gradwatch.stats lists, and
only those. Every
`stats_every` steps (and at step 1) also, per hidden activation module, the mean, std and
fraction of dead units of its output (forward hooks, armed for that step's forward only), per
BatchNorm the drift of its running mean/var since the last such step and its γ/β norms, and the
effective learning rate lr/‖w‖² of the weight that feeds it. All of it, plus the loss and
accuracy handed to `record()`, goes into one tensor copied to the host once per step — on CUDA
asynchronously into pinned memory and read one step later, so the training loop never waits for
it.

Cost, and where it goes (bench/probe_overhead.py, docs/benchmarks.md):
- CUDA: `torch._foreach_norm` (a few fused kernels for all tensors).
- CPU: `_foreach_norm` is a loop of one reduction per tensor (a few µs each), so small tensors of
  the same shape are stacked and reduced together where that makes fewer calls: the 20-block
  CNN's 124 norms before each step take 4 stacked reductions and one `_foreach_norm` over the
  38 larger tensors.
- The update: for plain SGD with momentum (the trainer's default) the step is exactly
  lr·momentum_buffer, so its norm is read from the buffer after the step, with no copy of the
  weights; for other optimizers the weights are snapshotted before the step and subtracted.

Gradients are read inside `optimizer.step()`. `GradScaler.step()` unscales them before calling
it, so AMP gradients are reported unscaled; for fused optimizers (which unscale inside their
kernel) the probe divides by the scaler's `optimizer.grad_scale`. A step that the scaler skips
(inf/NaN gradients) never reaches a non-fused optimizer and so is not reported.
"""

from __future__ import annotations

import math
import time
from array import array
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .models import layer_info
from .stats import PER_STATS_STEP, PER_STEP

# Activation modules whose output is a "hidden layer" for the activation statistics; dead-unit
# fractions only for those whose output is exactly 0 on a dead unit.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Softplus)
DEAD_CAN_BE_ZERO = (nn.ReLU, nn.ReLU6)


class _Norms:
    """L2 norms of a fixed layout of tensors (shapes, dtypes), as one float32 1-D device tensor.

    The norms come out in `order` (input indices), not in input order: reordering is left to the
    host, where it costs nothing. CUDA: `torch._foreach_norm` (fused kernels), input order. CPU,
    where `_foreach_norm` is a loop of one reduction per tensor: one reduction per group of small
    same-shaped tensors, stacked, when that makes fewer calls (a tensor of more than STACK_MAX
    elements is reduced alone: its own work dwarfs the call, and stacking would copy it)."""

    STACK_MAX = 4096  # elements: above ~16 KB the copy costs more than the call it saves

    def __init__(self, like: list[torch.Tensor]) -> None:
        groups: dict[Any, list[int]] = {}
        for i, t in enumerate(like):
            key = (tuple(t.shape), t.dtype) if t.numel() <= self.STACK_MAX else ("alone", i)
            groups.setdefault(key, []).append(i)
        stacked = [idx for idx in groups.values() if len(idx) > 1]
        self.alone = [idx[0] for idx in groups.values() if len(idx) == 1]
        # Rough CPU costs in µs: _foreach_norm loops in C++ (~2 a tensor, then a stack, ~3); a
        # Python-level call ~3 (a stacked group takes two: stack, norm; then one cat).
        grouped_cost = 3 * (2 * len(stacked) + 1) + (2 * len(self.alone) + 3 if self.alone else 0)
        self.fused = like[0].device.type != "cpu" or 2 * len(like) + 3 <= grouped_cost
        if self.fused:
            stacked, self.alone = [], list(range(len(like)))
        self.stacked = [(idx, tuple(range(1, like[idx[0]].ndim + 1))) for idx in stacked]
        self.order = [i for idx in stacked for i in idx] + self.alone
        self.inverse = [0] * len(self.order)  # input index -> position in the output
        for pos, i in enumerate(self.order):
            self.inverse[i] = pos

    def __call__(self, tensors: list[torch.Tensor]) -> torch.Tensor:
        if self.fused:
            return torch.stack(torch._foreach_norm(tensors, dtype=torch.float32))
        parts = []
        for idx, dims in self.stacked:
            if dims:
                parts.append(torch.linalg.vector_norm(torch.stack([tensors[i] for i in idx]), dim=dims,
                                                      dtype=torch.float32))
            else:  # 0-d tensors: the norm is the absolute value
                parts.append(torch.stack([tensors[i] for i in idx]).abs().float())
        if self.alone:
            parts.append(torch.stack(torch._foreach_norm([tensors[i] for i in self.alone], dtype=torch.float32)))
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def host_order(self, values: list[float]) -> list[float]:
        """Norms read back from the device, put back in input order."""
        return values if self.fused else [values[k] for k in self.inverse]


def _activation_stats(out: torch.Tensor, dead_possible: bool) -> torch.Tensor:
    """[mean, std, dead fraction] of one activation output, on its device (no sync).

    std is the unbiased one over all elements, taken in two passes (torch.std_mean is ~6x slower
    on the CPU). A unit is an index along dim 1 (features of a Linear, channels of a conv); it is
    dead when its output is <= 0 for every example (and position) of the batch."""
    o = out.detach().float()
    mean = o.mean()
    std = torch.linalg.vector_norm(o - mean) / math.sqrt(max(o.numel() - 1, 1))
    if dead_possible and o.ndim >= 2:
        dead = (o.amax(dim=(0, *range(2, o.ndim))) <= 0).float().mean()
    else:
        dead = torch.full((), math.nan, device=o.device)
    return torch.stack([mean, std, dead])


class Probe:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        on_step: Callable[[dict[str, Any]], None] | None = None,
        stats_every: int = 10,
        first_step: int = 1,
    ) -> None:
        if stats_every < 1:
            raise ValueError(f"stats_every must be 1 or more, got {stats_every}")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layers = layer_info(model)
        self.on_step = on_step
        self.stats_every = stats_every
        self.step = first_step - 1  # optimizer steps seen (a fork: counted from its parent's start)
        self.optimizer = optimizer
        self._device = self.params[0].device
        self._both = _Norms(self.params + self.params)  # grads, then weights
        n = len(self.params)
        self._grad_pos = torch.tensor(self._both.inverse[:n], device=self._device)
        self._is_grad = torch.tensor([float(i < n) for i in self._both.order], device=self._device)
        self._pre_order: _Norms | None = None  # how this step's _pre is ordered (None: input order)
        self._norms = _Norms(self.params)  # momentum buffers or weight differences
        self._pre: torch.Tensor | None = None  # this step's grad norms then weight norms, once computed
        self._pre_key: tuple | None = None  # which gradients they were computed from
        self._before: list[torch.Tensor] | None = None  # weight snapshot (non-SGD optimizers)
        self._nan = torch.full((1,), math.nan, device=self._device)
        self._loss = self._acc = self._nan
        self._latest: dict[str, Any] | None = None
        self._inflight: tuple[torch.Tensor, Any, dict[str, Any]] | None = None  # CUDA copy not yet read
        self._pinned = torch.empty(0)

        # Which optimizer group updates each parameter (None: the optimizer does not hold it).
        group_of: dict[int, int] = {id(p): gi for gi, g in enumerate(optimizer.param_groups) for p in g["params"]}
        self._group = [group_of.get(id(p)) for p in self.params]
        self._sgd = type(optimizer) is torch.optim.SGD and None not in self._group
        self._use_bufs = False  # this step's update norm comes from SGD's momentum buffers
        # Set by a caller whose backward runs inside `optimizer.step(closure)` and who calls
        # grads_ready() once the closure has run (Lightning): the pre-step hook then takes no
        # norms (the gradients are not there yet) and snapshots no weights for SGD.
        self.grads_in_closure = False
        self._deferred = False  # this step's gradient norms wait for grads_ready()

        # Costlier statistics (every stats_every steps): activations, BatchNorm, effective lr.
        index = {id(p): i for i, p in enumerate(self.params)}
        self.act_names: list[str] = []
        self._acts: list[tuple[nn.Module, bool]] = []
        self.bn_names: list[str] = []
        self.bn_feeds: list[str | None] = []  # the weight feeding each BN (Linear/Conv right before it)
        self._bn_idx: list[tuple[int | None, int | None, int | None]] = []  # γ, β, feeding weight
        self._bn_bufs: list[torch.Tensor] = []  # running_mean, running_var of each BN, in turn
        last_core: nn.Module | None = None
        for name, mod in model.named_modules():
            if isinstance(mod, ACTIVATIONS):
                self.act_names.append(name)
                self._acts.append((mod, isinstance(mod, DEAD_CAN_BE_ZERO)))
            elif isinstance(mod, (nn.Linear, nn.modules.conv._ConvNd)):
                last_core = mod
            elif isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                feeds = None
                out_dim = getattr(last_core, "out_features", getattr(last_core, "out_channels", None))
                if last_core is not None and out_dim == mod.num_features and id(last_core.weight) in index:
                    feeds = index[id(last_core.weight)]
                self.bn_names.append(name)
                self.bn_feeds.append(None if feeds is None else self.names[feeds])
                self._bn_idx.append((index.get(id(mod.weight)), index.get(id(mod.bias)), feeds))
                self._bn_bufs += [mod.running_mean, mod.running_var]
        self._bn_last = [b.detach().clone() for b in self._bn_bufs]
        self._bn_norms = _Norms(self._bn_bufs) if self._bn_bufs else None
        self._act_out: dict[int, torch.Tensor] = {}
        self._fwd_hooks: list[Any] = []

        self._hooks = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]
        if self._is_stats_step(first_step):
            self._arm()

    # ---- what the training loop may call ----------------------------------------------

    def record(self, loss: torch.Tensor | None = None, accuracy: torch.Tensor | None = None) -> None:
        """Hand this step's loss/accuracy (device tensors, no sync) to the next transfer."""
        if loss is not None:
            self._loss = loss.detach().reshape(1)  # torch.cat promotes it with the rest (float32)
        if accuracy is not None:
            self._acc = accuracy.detach().reshape(1)

    def grad_norms(self) -> torch.Tensor:
        """Per-parameter gradient norms of the current gradients (1-D device tensor, cached)."""
        pre = self._pre_norms_now()
        n = len(self.params)
        return pre[:n] if self._pre_order is None else pre.index_select(0, self._grad_pos)

    def grads_ready(self) -> None:
        """This step's gradients are final now: take their norms afresh. For loops whose backward
        runs inside `optimizer.step(closure)`, after the pre-step hook took the previous step's
        (Lightning without AMP): called once the closure has run. Not cached by the gradients'
        identity here, which a new gradient tensor can share with a freed one (same id, version 0)."""
        self._pre = None
        self._pre_norms_now()

    def _pre_norms_now(self) -> torch.Tensor:
        """Gradient norms and weight norms (2n), computed once per step in one pass."""
        grads = [p.grad for p in self.params]
        key = self._grads_key(grads)
        if self._pre is None or key != self._pre_key:
            if any(g is None for g in grads):  # some parameter unused this step: the slow, general path
                gn = torch.stack([torch.zeros((), device=p.device) if g is None else
                                  torch.linalg.vector_norm(g, dtype=torch.float32)
                                  for p, g in zip(self.params, grads, strict=True)])
                wn = torch.stack(torch._foreach_norm(self.params, dtype=torch.float32))
                self._pre, self._pre_order = torch.cat([gn, wn]), None  # input order
            else:
                self._pre, self._pre_order = self._both(grads + self.params), self._both
            self._pre_key = key
        return self._pre

    @torch.no_grad()
    def clip_(self, max_norm: float) -> None:
        """Clip the global gradient norm to max_norm, reusing the probe's norms (no extra pass).

        The probe reports the norms from before clipping: that is where an explosion shows."""
        total = torch.linalg.vector_norm(self.grad_norms())
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, coef)
        self._pre_key = self._grads_key([p.grad for p in self.params])  # still "this step's" norms

    def latest(self) -> dict[str, Any] | None:
        """The last completed step's statistics; never waits for the device."""
        if self._inflight is not None and self._inflight[1].query():
            self._read_inflight()
        return self._latest

    def flush(self) -> dict[str, Any] | None:
        """Wait for the step in flight (if any) and return the latest statistics."""
        if self._inflight is not None:
            self._read_inflight()
        return self._latest

    def close(self) -> None:
        """Publish the step in flight, then remove every hook the probe added."""
        self.flush()
        for h in self._hooks + self._fwd_hooks:
            h.remove()
        self._hooks, self._fwd_hooks = [], []

    # ---- optimizer hooks ---------------------------------------------------------------

    @staticmethod
    def _grads_key(grads: list[torch.Tensor | None]) -> tuple:
        g = next((g for g in grads if g is not None), None)
        return (None, None) if g is None else (id(g), g._version)

    def _is_stats_step(self, step: int) -> bool:
        return step == 1 or step % self.stats_every == 0

    @torch.no_grad()
    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        closure = kwargs.get("closure", args[0] if args else None)
        self._deferred = self.grads_in_closure and closure is not None
        if self._deferred:  # the backward has not run yet: grads_ready() takes the norms
            self._pre = None
            grads_present = True  # checked after the step, when they are there
        else:
            self._pre_norms_now()  # cached if clip_() already took them this step
            grads_present = all(p.grad is not None for p in self.params)
        scale = getattr(optimizer, "grad_scale", None)  # fused optimizer under a GradScaler
        if scale is not None and not self._deferred:
            is_grad = self._is_grad if self._pre_order is not None else torch.cat(
                [torch.ones(len(self.params)), torch.zeros(len(self.params))]).to(self._device)
            self._pre = self._pre / (1 + is_grad * (scale - 1))
        groups = optimizer.param_groups
        self._use_bufs = self._sgd and grads_present and all(
            g["momentum"] > 0 and not g["nesterov"] and not g.get("fused") and not g.get("differentiable")
            and not torch.is_tensor(g["lr"]) for g in groups)
        if not self._use_bufs:
            if self._before is None:
                self._before = [torch.empty_like(p) for p in self.params]
            torch._foreach_copy_(self._before, self.params)

    @torch.no_grad()
    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        step = self.step
        # The learning rate this step was taken with (the first group's: a scheduler steps after
        # the optimizer), read from the host; a tensor lr on an accelerator is not read.
        meta: dict[str, Any] = {"step": step, "time": time.time(), "lr": _host_float(optimizer.param_groups[0]["lr"])}
        if self._pre is None:  # deferred, and grads_ready() was not called: the weights are stepped already
            self._pre_norms_now()
        if self._use_bufs:  # SGD stepped w -= lr * buf: the update's norm is lr * ‖buf‖
            state = optimizer.state
            lrs = [g["lr"] for g in optimizer.param_groups]
            meta["update_scale"] = [lrs[gi] for gi in self._group]
            if self._deferred and any(p.grad is None for p in self.params):  # SGD skipped those: no update
                meta["update_scale"] = [0.0 if p.grad is None else lr
                                        for p, lr in zip(self.params, meta["update_scale"], strict=True)]
            bufs = [state[p].get("momentum_buffer") for p in self.params]
            bufs = [torch.zeros_like(p) if b is None else b for p, b in zip(self.params, bufs, strict=True)]
            dn, dn_order = self._norms(bufs), self._norms
        else:
            torch._foreach_sub_(self._before, self.params)  # w_before - w_after
            dn, dn_order = self._norms(self._before), self._norms
        meta["pre_order"] = self._pre_order
        meta["dn_order"] = dn_order
        parts = [self._pre, dn, self._loss, self._acc]
        if self._is_stats_step(step):
            parts += self._stats_tensors(meta, optimizer)
        packed = torch.cat(parts)
        self._pre = None
        self._loss = self._acc = self._nan
        if self._is_stats_step(step + 1):
            self._arm()  # the next step's forward is a stats step's: hook the activations for it
        if packed.is_cuda:
            if self._inflight is not None:  # last step's copy: done long ago, read it now
                self._read_inflight()
            if self._pinned.numel() < packed.numel():
                self._pinned = torch.empty(packed.numel(), pin_memory=True)
            host = self._pinned[: packed.numel()]
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._inflight = (host, event, meta)
        else:
            self._publish(packed.tolist(), meta)  # host already: no copy to wait for

    # ---- the every-stats_every-steps statistics ----------------------------------------

    def _arm(self) -> None:
        for i, (mod, dead_possible) in enumerate(self._acts):
            def hook(m: nn.Module, inputs: Any, out: Any, i: int = i, dead_possible: bool = dead_possible) -> None:
                if m.training and torch.is_tensor(out):  # not eval passes; last training call wins
                    self._act_out[i] = _activation_stats(out, dead_possible)
            self._fwd_hooks.append(mod.register_forward_hook(hook))

    def _stats_tensors(self, meta: dict[str, Any], optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
        for h in self._fwd_hooks:
            h.remove()
        self._fwd_hooks = []
        nan3 = self._nan.expand(3)
        acts = [self._act_out.get(i, nan3) for i in range(len(self._acts))]
        self._act_out = {}
        out = [torch.cat(acts)] if acts else []
        if self._bn_bufs:
            drift = torch._foreach_sub(self._bn_bufs, self._bn_last)
            out.append(self._bn_norms(drift))
            torch._foreach_copy_(self._bn_last, self._bn_bufs)
        lrs = [g["lr"] for g in optimizer.param_groups]
        groups = [None if f is None else self._group[f] for _, _, f in self._bn_idx]
        meta["stats"] = True
        meta["feed_lr"] = [None if gi is None else _host_float(lrs[gi]) for gi in groups]
        return out

    # ---- back on the host ----------------------------------------------------------------

    def _read_inflight(self) -> None:
        host, event, meta = self._inflight
        self._inflight = None
        event.synchronize()  # host sync point, one step late: the copy has long finished
        self._publish(host.tolist(), meta)

    def _publish(self, values: list[float], meta: dict[str, Any]) -> None:
        n = len(self.params)
        pre, dn = values[: 2 * n], values[2 * n : 3 * n]
        if meta["pre_order"] is not None:
            pre = meta["pre_order"].host_order(pre)
        dn = meta["dn_order"].host_order(dn)
        gn, wn = pre[:n], pre[n:]
        loss, acc = values[3 * n], values[3 * n + 1]
        scale = meta.get("update_scale")
        if scale is not None:
            dn = [lr * d for lr, d in zip(scale, dn, strict=True)]
        # The every-step statistics, one value per parameter, by their names in the registry
        # (gradwatch.stats: what is sent is exactly what it lists, in its order). Computed here
        # on the host are rounded to float32, as every other per-layer value is (the store keeps
        # float32 and gives the event back exactly as sent: server/columns.py).
        per_param = {
            "grad_norm": gn,
            "weight_norm": wn,
            "update_ratio": _ratio32(dn, wn),
            "grad_weight_ratio": _ratio32(gn, wn),
        }
        record = {
            "step": meta["step"],
            "time": meta["time"],
            "loss": loss,
            "accuracy": acc,
            "global_grad_norm": math.sqrt(sum(g * g for g in gn)),
            **{k: per_param[k] for k in PER_STEP},
        }
        if meta.get("lr") is not None:
            record["lr"] = meta["lr"]
        if meta.get("stats"):
            record["stats"] = self._stats_record(values[3 * n + 2 :], wn, meta["feed_lr"])
        self._latest = record
        if self.on_step is not None:
            self.on_step(record)

    def _stats_record(self, values: list[float], wn: list[float], feed_lr: list[float | None]) -> dict[str, Any]:
        def at(i: int | None) -> float | None:
            return None if i is None else wn[i]

        def num(v: float) -> float | None:
            return None if math.isnan(v) else v

        a = len(self._acts)
        acts, drift = values[: 3 * a], values[3 * a :]
        if self._bn_norms is not None:
            drift = self._bn_norms.host_order(drift)
        eff = []
        for (_, _, f), lr in zip(self._bn_idx, feed_lr, strict=True):
            w = at(f)
            eff.append(None if lr is None or w is None or w == 0 else array("f", [lr / (w * w)])[0])  # float32
        values = {  # per hidden activation, then per BatchNorm; by their names in the registry
            "act_mean": acts[0::3],
            "act_std": acts[1::3],
            "dead_frac": [num(v) for v in acts[2::3]],
            "bn_mean_drift": drift[0::2],
            "bn_var_drift": drift[1::2],
            "bn_gamma_norm": [at(g) for g, _, _ in self._bn_idx],
            "bn_beta_norm": [at(b) for _, b, _ in self._bn_idx],
            "eff_lr": eff,
        }
        return {"act_layers": self.act_names, "bn_layers": self.bn_names, "bn_feeds": self.bn_feeds,
                **{k: values[k] for k in PER_STATS_STEP}}


def _ratio32(num: list[float], den: list[float]) -> list[float]:
    """num[i] / den[i] rounded to float32 (0 where den[i] is 0), as Python floats."""
    return array("f", [n / d if d > 0 else 0.0 for n, d in zip(num, den, strict=True)]).tolist()


def _host_float(lr: Any) -> float | None:
    """A learning rate as a float; a tensor lr on an accelerator is not read (that would sync)."""
    if torch.is_tensor(lr):
        return float(lr) if lr.device.type == "cpu" else None
    return float(lr)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    stats_every: int = 10,
    first_step: int = 1,
) -> Probe:
    """Hook `optimizer.step()` of any loop; `on_step(stats)` is called for every reported step.
    first_step: the number of the first step it will see (a run resumed from a checkpoint).

    Steps 1, stats_every, 2·stats_every, … also carry the `stats` sub-record (activations, BN)."""
    return Probe(model, optimizer, on_step, stats_every, first_step)

