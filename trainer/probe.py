"""Per-layer statistics for any PyTorch loop, one host transfer per step.

    from trainer.probe import watch
    probe = watch(model, optimizer)     # hooks optimizer.step(); nothing else to call
    ...train as usual...
    probe.latest()                      # last completed step's statistics, never blocks
    probe.close()                       # removes every hook

Around each `optimizer.step()` the probe computes, on the parameters' device and with fused
`torch._foreach_*` kernels: every parameter's gradient norm and weight norm (before the step)
and the norm of the update the optimizer really applied (‖w_before − w_after‖). All of them,
plus the loss and accuracy handed to `record()`, go into one tensor that is copied to the host
once per step — on CUDA asynchronously into pinned memory and read one step later, so the
training loop never waits for it.

Gradients are read inside `optimizer.step()`. `GradScaler.step()` unscales them before calling
it, so AMP gradients are reported unscaled; a step that the scaler skips (inf/NaN gradients)
never reaches the optimizer and so is not reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .models import layer_info


class Probe:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        on_step: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.layers = layer_info(model)
        self.on_step = on_step
        self.step = 0  # optimizer steps seen
        self._device = self.params[0].device
        self._before = [torch.empty_like(p, memory_format=torch.preserve_format) for p in self.params]
        self._gn: list[torch.Tensor] | None = None  # this step's grad norms, once computed
        self._wn: list[torch.Tensor] | None = None
        self._extra = torch.full((2,), math.nan, device=self._device)  # loss, accuracy
        self._latest: dict[str, Any] | None = None
        self._inflight: tuple[torch.Tensor, Any, int, float] | None = None  # CUDA copy not yet read
        self._pinned = torch.empty(0)
        self._hooks = [
            optimizer.register_step_pre_hook(self._pre_step),
            optimizer.register_step_post_hook(self._post_step),
        ]

    # ---- what the training loop may call ----------------------------------------------

    def record(self, loss: torch.Tensor | None = None, accuracy: torch.Tensor | None = None) -> None:
        """Hand this step's loss/accuracy (device tensors, no sync) to the next transfer."""
        if loss is not None:
            self._extra[0].copy_(loss.detach().float().reshape(()))
        if accuracy is not None:
            self._extra[1].copy_(accuracy.detach().float().reshape(()))

    def grad_norms(self) -> list[torch.Tensor]:
        """Per-parameter gradient norms of the current gradients (device tensors, cached per step)."""
        if self._gn is None:
            grads = [p.grad if p.grad is not None else torch.zeros((), device=p.device) for p in self.params]
            self._gn = list(torch._foreach_norm(grads))
        return self._gn

    def clip_(self, max_norm: float) -> None:
        """Clip the global gradient norm to max_norm, reusing the probe's norms (no extra pass).

        The probe reports the norms from before clipping: that is where an explosion shows."""
        total = torch.linalg.vector_norm(torch.stack(self.grad_norms()))
        coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
        grads = [p.grad for p in self.params if p.grad is not None]
        torch._foreach_mul_(grads, coef)

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
        self.flush()
        for h in self._hooks:
            h.remove()
        self._hooks = []

    # ---- optimizer hooks ---------------------------------------------------------------

    def _pre_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.grad_norms()
        self._wn = list(torch._foreach_norm(self.params))
        torch._foreach_copy_(self._before, self.params)

    def _post_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.step += 1
        torch._foreach_sub_(self._before, self.params)  # now w_before - w_after
        dn = torch._foreach_norm(self._before)
        packed = torch.cat([torch.stack(self._gn), torch.stack(self._wn), torch.stack(dn), self._extra])
        packed = packed.float()
        self._gn = self._wn = None
        self._extra = torch.full((2,), math.nan, device=self._device)
        now = time.time()
        if packed.is_cuda:
            if self._inflight is not None:  # last step's copy: done long ago, read it now
                self._read_inflight()
            if self._pinned.numel() != packed.numel():
                self._pinned = torch.empty(packed.numel(), pin_memory=True)
            host = self._pinned if self._inflight is None else torch.empty_like(self._pinned)
            host.copy_(packed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._inflight = (host, event, self.step, now)
        else:
            self._publish(packed.tolist(), self.step, now)  # host already: no copy to wait for

    def _read_inflight(self) -> None:
        host, event, step, now = self._inflight
        self._inflight = None
        event.synchronize()  # host sync point, one step late: the copy has long finished
        self._publish(host.tolist(), step, now)

    def _publish(self, values: list[float], step: int, now: float) -> None:
        n = len(self.params)
        gn, wn, dn = values[:n], values[n : 2 * n], values[2 * n : 3 * n]
        loss, acc = values[3 * n], values[3 * n + 1]
        self._latest = {
            "step": step,
            "time": now,
            "loss": loss,
            "accuracy": acc,
            "global_grad_norm": math.sqrt(sum(g * g for g in gn)),
            "grad_norm": gn,
            "weight_norm": wn,
            "update_ratio": [d / w if w > 0 else 0.0 for d, w in zip(dn, wn, strict=True)],
        }
        if self.on_step is not None:
            self.on_step(self._latest)


def watch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    on_step: Callable[[dict[str, Any]], None] | None = None,
) -> Probe:
    """Hook `optimizer.step()` of any loop; `on_step(stats)` is called for every reported step."""
    return Probe(model, optimizer, on_step)


def first_nonfinite(names: list[str], values: list[float]) -> str | None:
    """Name of the first layer (forward order) whose value is NaN or infinite."""
    for name, v in zip(names, values, strict=True):
        if not math.isfinite(v):
            return name
    return None
