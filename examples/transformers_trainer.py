"""A Hugging Face `Trainer` run, live in the gradwatch dashboard: one callback.

    gradwatch serve                                               # in one terminal (prints its URL)
    python examples/transformers_trainer.py --epochs 20           # in another
    python examples/transformers_trainer.py --accumulate 4        # one dashboard step per 4 batches

A 2-layer, 32-unit BERT built from its config (random init: nothing is downloaded) classifies
generated token sequences: is token 7 in the sequence? Every layer's gradients, the loss, and the
evaluation's loss and accuracy appear live; Stop in the dashboard ends `trainer.train()`.
Needs `pip install 'gradwatch[transformers]'`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too
from gradwatch.integrations.transformers import GradwatchCallback  # noqa: E402

VOCAB, LENGTH, MARK = 32, 12, 7


def tiny_bert() -> BertForSequenceClassification:
    """2 layers x 32 hidden units, no dropout (so a run is the same for the same seed)."""
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertForSequenceClassification(config)


class Sequences(torch.utils.data.Dataset):
    """n random token sequences labelled 1 when they contain token MARK; the same for the same seed."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, LENGTH), generator=g)
        self.ids[torch.rand(n, generator=g) < 0.5, 0] = MARK  # half of them certainly have it
        self.labels = (self.ids == MARK).any(1).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def accuracy(pred: object) -> dict[str, float]:
    return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}


def quiet_args(out: str, **kwargs: object) -> TrainingArguments:
    """CPU, no reporting, no checkpoints: the dashboard is the log."""
    return TrainingArguments(output_dir=out, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True, logging_strategy="no", **kwargs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("GRADWATCH_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--token", default=os.environ.get("GRADWATCH_TOKEN"), help="default: $GRADWATCH_TOKEN")
    ap.add_argument("--name", default="hf-trainer")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batches", type=int, default=64, help="training batches of 16 per epoch")
    ap.add_argument("--accumulate", type=int, default=1, help="batches per optimizer step")
    args = ap.parse_args()

    torch.manual_seed(0)
    model = tiny_bert()
    callback = GradwatchCallback(args.server, token=args.token, name=args.name)
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(model=model, train_dataset=Sequences(16 * args.batches, seed=0),
                          eval_dataset=Sequences(256, seed=1), compute_metrics=accuracy, callbacks=[callback],
                          args=quiet_args(out, num_train_epochs=args.epochs, per_device_train_batch_size=16,
                                          gradient_accumulation_steps=args.accumulate, learning_rate=1e-3,
                                          eval_strategy="epoch"))
        trainer.train()
    run = callback.run
    print(f"run {run.id}: {run.summary['step']} steps, {'stopped from the dashboard' if run.should_stop else 'done'}"
          f"{'' if run.error is None else ' (' + run.error + ')'}", flush=True)
    return 0 if run.error is None else 1


if __name__ == "__main__":
    sys.exit(main())
