"""Hugging Face `transformers`: every optimizer step of a `Trainer`, live in the gradwatch dashboard.

    from gradwatch.integrations.transformers import GradwatchCallback
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[GradwatchCallback(name="my-bert")])
    trainer.train()

A `TrainerCallback` over `gradwatch.connect()` and `Run.watch()` (gradwatch/external.py), the
path of any hand-written loop: the probe hooks `step()` of the optimizer the callback receives
(the torch optimizer inside Accelerate's wrapper), so it reports once per real optimizer step,
whatever `gradient_accumulation_steps` is.

- Gradients are read when the optimizer steps: unscaled under fp16 mixed precision (Accelerate
  unscales before clipping), and after the Trainer's own clipping to `max_grad_norm` (default
  1.0; set it to 0 to see the raw norms). A step that the grad scaler skips is not reported.
- The loss of each step is the model's `loss` output in training mode (a forward hook keeps it
  as a device tensor, no host sync), averaged over the step's accumulated batches: the mean
  loss, for a model whose loss is a batch mean. (What the Trainer back-propagates under
  accumulation is transformers' own rule: a model that takes `num_items_in_batch` but ignores it,
  as BERT's classification head does, is stepped on the sum of the batches' losses; the probe
  reports the gradients the optimizer really got.)
- Evaluation's `eval_loss` and `eval_accuracy` (when `compute_metrics` returns an `accuracy`) are
  charted as the validation curves, with the step after the evaluation.
- The run's config is the `TrainingArguments` (`to_sanitized_dict()`), and the model's class.
- Stop in the dashboard sets `control.should_training_stop`: the Trainer ends after the current
  step and the run is `stopped`. The Trainer has no exception callback: a run whose `train()`
  raised is ended `failed` when the script exits (or call `callback.run.finish("failed", why)`).
- Only the main process (`state.is_world_process_zero`) connects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..external import DEFAULT_URL, Run, connect
from . import jsonable


class GradwatchCallback(TrainerCallback):
    """Streams a `transformers.Trainer` run to a gradwatch server."""

    def __init__(self, url: str | None = None, token: str | None = None, name: str | None = None,
                 config: dict[str, Any] | None = None, stats_every: int = 10, val_loss: str = "eval_loss",
                 val_accuracy: str = "eval_accuracy", finish_timeout: float = 60.0) -> None:
        """url/token: the server (default: $GRADWATCH_URL or http://127.0.0.1:8000, $GRADWATCH_TOKEN).
        name: the run's name (default: args.run_name). config: more to show beside TrainingArguments.
        val_loss/val_accuracy: the evaluation metrics charted as validation loss and accuracy."""
        self.url = url or os.environ.get("GRADWATCH_URL") or DEFAULT_URL
        self.token, self.name, self.extra_config = token, name, config or {}
        self.stats_every, self.finish_timeout = stats_every, finish_timeout
        self.val_names = (val_loss, val_accuracy)
        self.run: Run | None = None
        self._losses: list[torch.Tensor] = []  # this step's micro-batch losses, on the device
        self._hook: Any = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: torch.nn.Module | None = None, optimizer: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or self.run is not None:
            return
        if model is None or optimizer is None:
            raise ValueError("GradwatchCallback needs the Trainer's model and optimizer (transformers >= 4.40)")
        optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps it
        config = {**jsonable(args.to_sanitized_dict()), "model": type(model).__name__, **jsonable(self.extra_config)}
        self.run = connect(self.url, token=self.token, name=self.name or args.run_name, config=config)
        self.run.watch(model, optimizer, stats_every=self.stats_every)
        self._hook = model.register_forward_hook(self._keep_loss)

    def _keep_loss(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not module.training:
            return
        loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
        if torch.is_tensor(loss):
            self._losses.append(loss.detach().float().reshape(()))

    def on_pre_optimizer_step(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                              **kwargs: Any) -> None:
        if self.run is not None:
            losses = self._losses
            # One batch a step (no accumulation): its loss as it is, not a stack and a mean of one.
            loss = losses[0] if len(losses) == 1 else torch.stack(losses).mean() if losses else None
            self._losses = []
            self.run.record(loss)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        if self.run is not None and self.run.should_stop:
            control.should_training_stop = True  # the Trainer ends after this step

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if self.run is None or self.run.probe is None or not metrics:
            return
        val_loss, val_acc = (metrics.get(name) for name in self.val_names)
        if val_loss is not None or val_acc is not None:
            self.run.record(val_loss=val_loss, val_accuracy=val_acc)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.run is not None:
            self.run.finish(timeout=self.finish_timeout)
