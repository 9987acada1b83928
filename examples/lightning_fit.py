"""A PyTorch Lightning fit, live in the gradwatch dashboard: one callback.

    gradwatch serve                                        # in one terminal (prints its URL)
    python examples/lightning_fit.py --epochs 20           # in another
    python examples/lightning_fit.py --accumulate 4        # one dashboard step per 4 batches

A small MLP classifies generated points (Gaussian clusters, made from a seed: nothing is
downloaded); it logs `train_acc`, `val_loss` and `val_acc` with `self.log`, which the dashboard
charts beside every layer's gradient statistics. Stop in the dashboard ends the fit.
Needs `pip install 'gradwatch[lightning]'`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too
from gradwatch.integrations.lightning import GradwatchCallback  # noqa: E402


class Classifier(pl.LightningModule):
    def __init__(self, features: int = 16, hidden: int = 32, classes: int = 4, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()  # the run's config in the dashboard
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        self.log("train_acc", (logits.argmax(1) == y).float().mean())
        return nn.functional.cross_entropy(logits, y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)


def clusters(n: int, features: int = 16, classes: int = 4, seed: int = 0) -> TensorDataset:
    """n points around `classes` fixed random centres: learnable, and the same for the same seed."""
    centres = torch.randn(classes, features, generator=torch.Generator().manual_seed(1234)) * 2
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, features, generator=g), y)


def quiet_trainer(**kwargs: object) -> pl.Trainer:
    """A CPU Trainer without progress bar, logger or checkpoints (the dashboard is the log)."""
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, **kwargs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("GRADWATCH_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--token", default=os.environ.get("GRADWATCH_TOKEN"), help="default: $GRADWATCH_TOKEN")
    ap.add_argument("--name", default="lightning-fit")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batches", type=int, default=64, help="training batches of 32 per epoch")
    ap.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = Classifier()
    train = DataLoader(clusters(32 * args.batches, seed=0), batch_size=32, shuffle=True)
    val = DataLoader(clusters(512, seed=1), batch_size=256)
    callback = GradwatchCallback(args.server, token=args.token, name=args.name)
    trainer = quiet_trainer(max_epochs=args.epochs, accumulate_grad_batches=args.accumulate, callbacks=[callback])
    trainer.fit(model, train, val)
    run = callback.run
    print(f"run {run.id}: {run.summary['step']} steps, {'stopped from the dashboard' if run.should_stop else 'done'}"
          f"{'' if run.error is None else ' (' + run.error + ')'}", flush=True)
    return 0 if run.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
