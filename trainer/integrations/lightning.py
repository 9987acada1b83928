"""PyTorch Lightning: every optimizer step of a `Trainer.fit`, live in the gradwatch dashboard.

    from gradwatch.integrations.lightning import GradwatchCallback
    trainer = lightning.Trainer(callbacks=[GradwatchCallback(name="my-model")], ...)
    trainer.fit(model, datamodule)

The callback is a thin layer over `gradwatch.connect()` and `Run.watch()` (gradwatch/external.py),
the path of any hand-written loop: the same probe hooks `optimizer.step()` of the fit's optimizer,
the same ingest client sends the steps.

- One metrics row per real optimizer step: under `accumulate_grad_batches=4` Lightning steps the
  optimizer once every 4 batches, and so does the probe.
- Gradients as the optimizer sees them: Lightning runs the backward inside `optimizer.step(closure)`
  (after the probe's pre-step hook), so the norms are taken in `on_before_optimizer_step`, which
  Lightning calls once the closure has run and, under 16-bit mixed precision, after it unscaled
  the gradients. They are from before gradient clipping, as in the built-in trainer.
- The loss is the one Lightning back-propagates (summed over the accumulated batches, which
  Lightning divides by their number: the mean), taken from `on_before_backward` as a device
  tensor (no host sync). Accuracy and validation metrics are what the module `self.log`-s under
  the names in `accuracy`, `val_loss`, `val_accuracy` (the first of each tuple that was logged).
- The run's config is the module's `hparams` (`self.save_hyperparameters()`), plus the Trainer's
  precision, accumulation and step/epoch limits.
- Stop in the dashboard sets `trainer.should_stop`: the fit ends after the current batch, and the
  run is `stopped`. An exception in the fit ends the run `failed` with its reason.
- Only the global-zero process of a multi-process fit connects; the others do nothing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch

from ..external import DEFAULT_URL, Run, connect
from . import jsonable

ACCURACY = ("train_acc", "train_accuracy", "acc", "accuracy", "train/acc", "train/accuracy")
VAL_LOSS = ("val_loss", "val/loss", "validation_loss")
VAL_ACCURACY = ("val_acc", "val_accuracy", "val/acc", "val/accuracy", "validation_accuracy")


def first_metric(metrics: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    return next((metrics[n] for n in names if n in metrics), None)


class GradwatchCallback(pl.Callback):
    """Streams a `Trainer.fit` to a gradwatch server (Lightning's Callback API)."""

    def __init__(self, url: str | None = None, token: str | None = None, name: str | None = None,
                 config: dict[str, Any] | None = None, stats_every: int = 10,
                 accuracy: tuple[str, ...] = ACCURACY, val_loss: tuple[str, ...] = VAL_LOSS,
                 val_accuracy: tuple[str, ...] = VAL_ACCURACY, finish_timeout: float = 60.0) -> None:
        """url/token: the server (default: $GRADWATCH_URL or http://127.0.0.1:8000, $GRADWATCH_TOKEN).
        name: the run's name (default: the module's class name). config: more to show beside hparams.
        accuracy/val_loss/val_accuracy: the `self.log` names to chart (the first one logged)."""
        self.url = url or os.environ.get("GRADWATCH_URL") or DEFAULT_URL
        self.token, self.name, self.extra_config = token, name, config or {}
        self.stats_every, self.finish_timeout = stats_every, finish_timeout
        self.names = {"accuracy": accuracy, "val_loss": val_loss, "val_accuracy": val_accuracy}
        self.run: Run | None = None
        self._loss: torch.Tensor | None = None  # this optimizer step's loss, summed on the device

    # ---- the run ------------------------------------------------------------------------

    def run_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        config = jsonable(dict(pl_module.hparams))
        for key, value in (("model", type(pl_module).__name__), ("precision", str(trainer.precision)),
                           ("accumulate_grad_batches", trainer.accumulate_grad_batches),
                           ("max_steps", trainer.max_steps), ("max_epochs", trainer.max_epochs)):
            config.setdefault(key, jsonable(value))
        return {**config, **jsonable(self.extra_config)}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if len(trainer.optimizers) != 1:
            raise ValueError(f"GradwatchCallback watches one optimizer; this fit has {len(trainer.optimizers)}")
        self.run = connect(self.url, token=self.token, name=self.name or type(pl_module).__name__,
                           config=self.run_config(trainer, pl_module))
        self.run.watch(pl_module, trainer.optimizers[0], stats_every=self.stats_every)
        # Lightning runs the backward inside optimizer.step(closure), and this callback calls
        # grads_ready() after it: no norms or weight copy before the closure, which would be wasted.
        self.run.probe.grads_in_closure = True

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        if self.run is not None:
            loss = loss.detach()
            self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        if self.run is None:
            return
        self.run.probe.grads_ready()  # the closure has run (and AMP unscaled): these are this step's gradients
        accuracy = first_metric(trainer.callback_metrics, self.names["accuracy"])
        self.run.record(self._loss, accuracy if torch.is_tensor(accuracy) else None)
        self._loss = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.run is not None and self.run.should_stop:
            trainer.should_stop = True  # Lightning ends the fit after this batch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is None or self.run.probe is None or trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        val_loss = first_metric(metrics, self.names["val_loss"])
        val_acc = first_metric(metrics, self.names["val_accuracy"])
        if val_loss is not None or val_acc is not None:  # once per validation: a host sync is fine here
            self.run.record(val_loss=None if val_loss is None else float(val_loss),
                            val_accuracy=None if val_acc is None else float(val_acc))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish(timeout=self.finish_timeout)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.run is not None:
            if isinstance(exception, KeyboardInterrupt):
                self.run.finish("stopped", "interrupted (Ctrl-C)", timeout=10)
            else:
                self.run.finish("failed", f"{type(exception).__name__}: {exception}", timeout=10)
