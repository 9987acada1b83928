"""MLP and CNN builders. BatchNorm is switched here and only here (`_block`), and the init
scheme here and only here (`_init`). Modules are named (fc1, bn1, act1, …, out) so that
`named_parameters()` gives readable layer names in forward order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from .config import RunConfig

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build(cfg: RunConfig, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    if cfg.model == "mlp":
        layers["flat"] = nn.Flatten()
        width_in = 1
        for d in in_shape:
            width_in *= d
        for i in range(1, cfg.depth + 1):
            _block(layers, i, nn.Linear(width_in, cfg.width, bias=not cfg.batchnorm), cfg)
            width_in = cfg.width
        layers["out"] = nn.Linear(width_in, n_classes)
    else:
        channels, size = in_shape[0], in_shape[-1]
        for i in range(1, cfg.depth + 1):
            conv = nn.Conv2d(channels, cfg.width, 3, padding=1, bias=not cfg.batchnorm)
            _block(layers, i, conv, cfg)
            channels = cfg.width
            if size > 8 and i % 2 == 0:  # shrink big images early; 8x8 digits stay whole
                layers[f"pool{i}"] = nn.MaxPool2d(2)
                size //= 2
        layers["gap"] = nn.AdaptiveAvgPool2d(1)
        layers["flat"] = nn.Flatten()
        layers["out"] = nn.Linear(channels, n_classes)
    model = nn.Sequential(layers)
    _init(model, cfg)
    return model


def _block(layers: OrderedDict[str, nn.Module], i: int, core: nn.Module, cfg: RunConfig) -> None:
    """One hidden block: core (Linear/Conv), then BN if on, then activation, then dropout."""
    conv = isinstance(core, nn.Conv2d)
    layers[f"{'conv' if conv else 'fc'}{i}"] = core
    if cfg.batchnorm:
        layers[f"bn{i}"] = (nn.BatchNorm2d if conv else nn.BatchNorm1d)(cfg.width)
    layers[f"act{i}"] = _ACT[cfg.activation]()
    if cfg.dropout > 0:
        layers[f"drop{i}"] = (nn.Dropout2d if conv else nn.Dropout)(cfg.dropout)


def _init(model: nn.Module, cfg: RunConfig) -> None:
    if cfg.init == "default":
        return  # PyTorch's own (Kaiming-uniform with a=sqrt(5))
    gain_name = "relu" if cfg.activation == "relu" else "tanh"
    for m in model.modules():
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            continue
        if cfg.init == "kaiming":
            nn.init.kaiming_normal_(m.weight, nonlinearity=gain_name)
        elif cfg.init == "xavier":
            nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain(gain_name))
        else:
            nn.init.normal_(m.weight, 0.0, cfg.init_std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def layer_info(model: nn.Module) -> list[dict]:
    """Name, module type and shape of every trainable parameter tensor, in forward order."""
    owner = {}
    for mod_name, mod in model.named_modules():
        for p_name, _ in mod.named_parameters(recurse=False):
            owner[f"{mod_name}.{p_name}" if mod_name else p_name] = type(mod).__name__
    return [
        {"name": n, "module": owner.get(n, "?"), "shape": list(p.shape)}
        for n, p in model.named_parameters()
        if p.requires_grad
    ]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validation loss and accuracy as device tensors (the caller decides when to sync)."""
    was_training = model.training
    model.eval()
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for i in range(0, len(x), chunk):
        logits = model(x[i : i + chunk]).float()
        loss += nn.functional.cross_entropy(logits, y[i : i + chunk], reduction="sum")
        correct += (logits.argmax(1) == y[i : i + chunk]).sum()
    model.train(was_training)
    return loss / len(x), correct / len(x)
