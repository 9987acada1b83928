"""The optimizer and its parameter groups. The L2 (weight decay) rule is stated once, here:
Linear/Conv weights (tensors of 2 or more dims) decay; biases and BatchNorm's γ/β do not.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import RunConfig


def build(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.l2, "gradwatch_l2": True},
        {"params": no_decay, "weight_decay": 0.0, "gradwatch_l2": False},
    ]
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def set_l2(optimizer: torch.optim.Optimizer, value: float) -> None:
    for g in optimizer.param_groups:
        if g.get("gradwatch_l2"):
            g["weight_decay"] = value


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = value


def current_l2(optimizer: torch.optim.Optimizer) -> float:
    return next((g["weight_decay"] for g in optimizer.param_groups if g.get("gradwatch_l2")), 0.0)
