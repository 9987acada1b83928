"""Model builders: the MLP and CNN of the lessons, torchvision's ResNet-18/34 adapted to small
images, and a small transformer for the token tasks. Normalisation is switched here and only
here (`_block`, `_resnet`'s norm_layer, `Block`'s LayerNorm placement), and the init scheme here
and only here (`_init`). Modules are named (fc1, bn1, act1, …, out; layer3.1.conv2;
blocks.0.attn.q) so that `named_parameters()` gives readable layer names in forward order.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from .config import RunConfig
from .data import TOKENS

_ACT = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build(cfg: RunConfig, in_shape: tuple[int, ...], n_classes: int) -> nn.Module:
    if cfg.model == "resnet":
        model = _resnet(cfg, in_shape[0], n_classes)
        _init(model, cfg)
        return model
    if cfg.model == "transformer":
        model = Transformer(cfg, in_shape[0], n_classes)
        _init(model, cfg)
        return model
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


RESNET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # BasicBlocks per stage, as torchvision builds them


def _resnet(cfg: RunConfig, channels: int, n_classes: int) -> nn.Module:
    """torchvision's ResNet-18 or -34 (`depth`), its stem made for small images (a 3x3 stride-1
    conv and no max-pool, so 8x8 digits keep their pixels through the first stage), BatchNorm
    on or off (`batchnorm`; off: torchvision's norm_layer is the identity, so the convolutions
    keep no bias, as with it), the activation `activation`."""
    from torchvision.models.resnet import BasicBlock, ResNet

    norm = nn.BatchNorm2d if cfg.batchnorm else (lambda c: nn.Identity())
    model = ResNet(BasicBlock, list(RESNET_BLOCKS[cfg.depth]), num_classes=n_classes, norm_layer=norm)
    model.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    if cfg.activation != "relu":  # every ReLU module (the stem's and each block's) becomes the chosen one
        for mod in list(model.modules()):
            for name, child in mod.named_children():
                if isinstance(child, nn.ReLU):
                    setattr(mod, name, _ACT[cfg.activation]())
    return model


class Attention(nn.Module):
    """Causal-free multi-head self-attention with one named Linear per projection."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, w = x.shape
        q, k, v = (proj(x).view(b, t, self.heads, w // self.heads).transpose(1, 2) for proj in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.o(y.transpose(1, 2).reshape(b, t, w))


class Block(nn.Module):
    """One transformer block. `layernorm`: "pre" normalises each branch's input (x + f(LN(x))),
    "post" the sum after it (LN(x + f(x)), the original 2017 layout), "none" leaves both out."""

    def __init__(self, cfg: RunConfig, heads: int) -> None:
        super().__init__()
        w, self.where = cfg.width, cfg.layernorm
        self.attn = Attention(w, heads, cfg.dropout)
        self.mlp = nn.Sequential(OrderedDict(
            fc1=nn.Linear(w, 4 * w), act=_ACT[cfg.activation](), fc2=nn.Linear(4 * w, w)))
        self.drop = nn.Dropout(cfg.dropout)
        if self.where != "none":
            self.ln1, self.ln2 = nn.LayerNorm(w), nn.LayerNorm(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.where == "pre":
            x = x + self.drop(self.attn(self.ln1(x)))
            return x + self.drop(self.mlp(self.ln2(x)))
        if self.where == "post":
            x = self.ln1(x + self.drop(self.attn(x)))
            return self.ln2(x + self.drop(self.mlp(x)))
        x = x + self.drop(self.attn(x))
        return x + self.drop(self.mlp(x))


class Transformer(nn.Module):
    """A small encoder for the token tasks (trainer/data.py's `modadd`): token and position
    embeddings, `depth` blocks of `width` (4 heads when width divides by 4, else 1), a final
    LayerNorm with pre-LN (as GPT-2), and a linear head reading the last position."""

    def __init__(self, cfg: RunConfig, length: int, n_classes: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(TOKENS, cfg.width)
        self.pos = nn.Embedding(length, cfg.width)
        heads = 4 if cfg.width % 4 == 0 else 1
        self.blocks = nn.ModuleList(Block(cfg, heads) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width) if cfg.layernorm == "pre" else nn.Identity()
        self.out = nn.Linear(cfg.width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos.weight[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.out(self.ln_f(h[:, -1]))


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
