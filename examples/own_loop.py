"""Your own PyTorch loop, live in the gradwatch dashboard.

    gradwatch serve                                   # in one terminal (prints its URL)
    python examples/own_loop.py --steps 2000          # in another: watch it train, every step

A torchvision model (torchvision.ops.MLP, or a small ResNet-18 with --model resnet18) trains on
scikit-learn's bundled 8x8 digits, so nothing is downloaded. Three lines are gradwatch's:
connect(), run.watch() and run.finish(); run.record() and run.should_stop are optional. If the
server goes away mid-run, the run keeps training and its steps are sent when the server is back.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from sklearn.datasets import load_digits
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout too
from gradwatch import connect  # noqa: E402


def build(name: str) -> nn.Module:
    if name == "mlp":
        return torchvision.ops.MLP(64, [128, 128, 10], norm_layer=nn.BatchNorm1d)
    net = torchvision.models.resnet18(num_classes=10)  # random init: no weights to download
    # 64 pixels -> a 3-channel 8x8 image; named, so the dashboard's layers read "resnet.conv1.weight"
    return nn.Sequential(OrderedDict(image=nn.Unflatten(1, (1, 8, 8)), rgb=nn.Conv2d(1, 3, 1), resnet=net))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", default=os.environ.get("GRADWATCH_URL", "http://127.0.0.1:8000"))
    ap.add_argument("--token", default=os.environ.get("GRADWATCH_TOKEN"), help="default: $GRADWATCH_TOKEN")
    ap.add_argument("--name", default="own-loop")
    ap.add_argument("--model", choices=["mlp", "resnet18"], default="mlp")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32, device=args.device) / 16.0
    y = torch.tensor(digits.target, device=args.device)
    x_train, y_train, x_val, y_val = x[:1500], y[:1500], x[1500:], y[1500:]
    model = build(args.model).to(args.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)

    run = connect(args.server, token=args.token, name=args.name,
                  config={"model": f"torchvision {args.model}", "dataset": "digits", "lr": args.lr,
                          "batch_size": args.batch_size, "steps": args.steps})
    print(f"streaming run {run.id} to {run.url}", flush=True)
    run.watch(model, optimizer)

    for step in range(1, args.steps + 1):
        if run.should_stop:  # Stop was pressed in the dashboard
            break
        idx = torch.randint(0, len(x_train), (args.batch_size,), device=args.device)
        logits = model(x_train[idx])
        loss = nn.functional.cross_entropy(logits, y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        accuracy = (logits.argmax(1) == y_train[idx]).float().mean()
        val = {}
        if step % 100 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                val_logits = model(x_val)
            model.train()
            val = {"val_loss": nn.functional.cross_entropy(val_logits, y_val).item(),  # host sync, eval steps only
                   "val_accuracy": (val_logits.argmax(1) == y_val).float().mean().item()}
        run.record(loss, accuracy, **val)  # device tensors: no host sync
        optimizer.step()

    acked = run.finish(timeout=120)  # waits for the server to store every step (bounded)
    print(f"run {run.id}: {run.summary['step']} steps, loss {run.summary['loss']:.4g}, "
          f"{'all steps stored' if acked else 'some steps not acknowledged: ' + str(run.error)}", flush=True)
    return 0 if acked else 1


if __name__ == "__main__":
    sys.exit(main())
