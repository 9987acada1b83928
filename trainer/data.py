"""Datasets as tensors on the run's device, and batches drawn by index on that device.

No DataLoader in the hot loop: the whole (small) dataset is moved to the device once, and
each step gathers a batch with one index_select. `digits` ships inside scikit-learn and is
the offline default; the torchvision sets download into the data dir on first use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

OFFLINE_HINT = "use dataset='digits' (bundled with scikit-learn, works offline) or 'synthetic'"

# `modadd`: every pair (a, b) of residues mod MODULUS as the tokens [a, b, =], the class
# (a + b) mod MODULUS (the grokking task of Power et al. 2022). Made here, so it works offline.
MODULUS = 59
TOKENS = MODULUS + 1  # the residues, and "="
SEQUENCE_DATASETS = ("modadd",)  # token ids, for the transformer; the others are images


class DatasetUnavailable(RuntimeError):
    """The dataset cannot be had on this machine (no internet for a download, say)."""


@dataclass
class Dataset:
    x_train: torch.Tensor  # (N, C, H, W) float32 on the run's device
    y_train: torch.Tensor  # (N,) int64
    x_val: torch.Tensor
    y_val: torch.Tensor
    n_classes: int

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load(name: str, device: torch.device, data_dir: str | Path | None = None, seed: int = 0) -> Dataset:
    if name == "digits":
        x, y = _digits()
    elif name == "synthetic":
        x, y = _synthetic(seed)
    elif name == "modadd":
        x, y = _modadd()
    elif name in ("mnist", "fashion_mnist", "cifar10"):
        x, y = _torchvision(name, Path(data_dir or "data"))
    else:
        raise DatasetUnavailable(f"unknown dataset {name!r}; {OFFLINE_HINT}")
    # A fixed split (not the run's seed) so runs with different seeds validate on the same data.
    split = torch.randperm(len(x), generator=torch.Generator().manual_seed(1234))
    n_val = max(1, len(x) // 10)
    val, train = split[:n_val], split[n_val:]
    x, y = x.to(device), y.to(device)
    return Dataset(x[train], y[train], x[val], y[val], int(y.max()) + 1)


def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (1797, 1, 8, 8)
    x = (x - x.mean()) / x.std()
    return x, torch.tensor(d.target, dtype=torch.int64)


def _synthetic(seed: int, n: int = 2048, n_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian blobs shaped like digits (1x8x8): learnable, instant, no files."""
    g = torch.Generator().manual_seed(seed + 7919)
    centers = torch.randn(n_classes, 1, 8, 8, generator=g)
    y = torch.randint(0, n_classes, (n,), generator=g)
    x = centers[y] + 0.8 * torch.randn(n, 1, 8, 8, generator=g)
    return x, y


def _modadd() -> tuple[torch.Tensor, torch.Tensor]:
    a, b = torch.meshgrid(torch.arange(MODULUS), torch.arange(MODULUS), indexing="ij")
    a, b = a.reshape(-1), b.reshape(-1)
    x = torch.stack([a, b, torch.full_like(a, MODULUS)], dim=1)  # (3481, 3) token ids
    return x, (a + b) % MODULUS


def _torchvision(name: str, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover - torchvision is a dependency
        raise DatasetUnavailable(f"{name} needs torchvision ({e}); {OFFLINE_HINT}") from e
    cls = {
        "mnist": torchvision.datasets.MNIST,
        "fashion_mnist": torchvision.datasets.FashionMNIST,
        "cifar10": torchvision.datasets.CIFAR10,
    }[name]
    try:
        ds = cls(str(root / name), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - any download failure gets the same advice
        raise DatasetUnavailable(
            f"{name} is not in {root / name} and could not be downloaded ({type(e).__name__}: {e}); "
            f"{OFFLINE_HINT}"
        ) from e
    data = torch.as_tensor(ds.data)
    x = data.float().div(255.0)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)  # CIFAR is NHWC
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True)
    return x.contiguous(), torch.as_tensor(ds.targets, dtype=torch.int64)


class Batches:
    """Shuffled epochs of index batches, drawn on the data's device. Same seed => same order."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.device = device
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.int64, device=device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(self.n, generator=self.gen, device=self.device)
            self.pos = 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx
