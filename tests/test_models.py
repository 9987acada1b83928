"""The real architectures (issue 18): torchvision's ResNet-18/34 adapted to small images, and a
small transformer on the offline token task `modadd`. Each trains on the CPU through the real
loop and probe, and its normalisation toggle changes the normalisation layers and nothing else."""

from __future__ import annotations

import pytest
import torch
from gradwatch import data, models
from gradwatch.config import ConfigError, RunConfig
from gradwatch.loop import train
from torch import nn

NORMS = (nn.BatchNorm2d, nn.LayerNorm)


def tensors(cfg: RunConfig) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every parameter tensor of the model cfg builds: name -> (module type, shape)."""
    ds_shape, n_classes = ((3,), data.MODULUS) if cfg.dataset == "modadd" else ((1, 8, 8), 10)
    net = models.build(cfg, ds_shape, n_classes)
    return {info["name"]: (info["module"], tuple(info["shape"])) for info in models.layer_info(net)}


def assert_only_norms_differ(with_norm: dict, without: dict, norm_type: str) -> None:
    extra = set(with_norm) - set(without)
    assert extra and all(with_norm[name][0] == norm_type for name in extra), extra
    assert set(without) <= set(with_norm)
    assert all(with_norm[name] == without[name] for name in without)  # same modules, same shapes


@pytest.mark.parametrize("depth", [18, 34])
def test_resnet_batchnorm_toggle_changes_exactly_the_batchnorm_layers(depth: int) -> None:
    on = tensors(RunConfig(model="resnet", depth=depth, batchnorm=True))
    off = tensors(RunConfig(model="resnet", depth=depth, batchnorm=False))
    assert_only_norms_differ(on, off, "BatchNorm2d")
    convs = [n for n, (kind, _) in off.items() if kind == "Conv2d"]
    # torchvision's layout: a stem conv, two per BasicBlock, one per downsampling shortcut.
    blocks = sum(models.RESNET_BLOCKS[depth])
    assert len(convs) == 1 + 2 * blocks + 3
    assert len(on) - len(off) == 2 * len(convs)  # each conv's BatchNorm: weight and bias
    assert off["conv1.weight"][1] == (64, 1, 3, 3)  # the small-image stem
    assert off["fc.weight"][1] == (10, 512)
    assert list(on)[:3] == ["conv1.weight", "bn1.weight", "bn1.bias"]  # forward order


def test_transformer_layernorm_placement_changes_exactly_the_layernorms() -> None:
    cfg = {"model": "transformer", "dataset": "modadd", "depth": 3, "width": 32}
    pre, post, none = (tensors(RunConfig(**cfg, layernorm=w)) for w in ("pre", "post", "none"))
    assert_only_norms_differ(pre, none, "LayerNorm")
    assert_only_norms_differ(post, none, "LayerNorm")
    assert set(pre) - set(post) == {"ln_f.weight", "ln_f.bias"}  # pre-LN's final LayerNorm
    assert len(set(post) - set(none)) == 3 * 2 * 2  # two LayerNorms a block, weight and bias
    # Pre and post put the same LayerNorms in different places: same tensors, other forward.
    x = torch.randint(0, data.TOKENS, (4, 3))
    torch.manual_seed(0)
    a = models.build(RunConfig(**cfg, layernorm="pre"), (3,), data.MODULUS)
    torch.manual_seed(0)
    b = models.build(RunConfig(**cfg, layernorm="post"), (3,), data.MODULUS)
    assert not torch.allclose(a(x), b(x))


def test_a_resnet_run_through_the_loop_lowers_the_loss_and_probes_every_tensor(one_thread: None) -> None:
    events: list[dict] = []
    cfg = RunConfig(model="resnet", depth=18, batchnorm=True, batch_size=16, steps=6, lr=0.01, eval_every=0)
    result = train(cfg, events.append)
    assert result["status"] == "completed"
    layers = events[0]["layers"]
    assert len(layers) == 62 and layers[0]["name"] == "conv1.weight"
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    assert all(len(m["grad_norm"]) == len(layers) and all(g > 0 for g in m["grad_norm"]) for m in metrics)
    losses = [m["loss"] for m in metrics]
    assert sum(losses[-2:]) < 0.8 * sum(losses[:2]), losses


def test_a_transformer_learns_and_runs_through_the_loop(one_thread: None) -> None:
    torch.manual_seed(0)
    ds = data.load("modadd", torch.device("cpu"))
    assert ds.x_train.shape[1:] == (3,) and ds.n_classes == data.MODULUS
    assert bool(((ds.x_train[:, 0] + ds.x_train[:, 1]) % data.MODULUS == ds.y_train).all())
    # It can learn: 32 examples memorised by a plain AdamW loop.
    net = models.build(RunConfig(model="transformer", dataset="modadd", depth=2, width=32), (3,), data.MODULUS)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    x, y = ds.x_train[:32], ds.y_train[:32]
    first = None
    for _ in range(60):
        loss = nn.functional.cross_entropy(net(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first, (first, loss.item())
    # And through the real loop and probe: every tensor's statistics, every step.
    events: list[dict] = []
    result = train(RunConfig(model="transformer", dataset="modadd", depth=2, width=32, steps=5, eval_every=5,
                             optimizer="adamw", lr=1e-3), events.append)
    assert result["status"] == "completed" and 0 <= result["val_accuracy"] <= 1
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == 5 and all(len(m["grad_norm"]) == len(events[0]["layers"]) for m in metrics)


@pytest.mark.parametrize(("values", "field"), [
    ({"model": "resnet", "depth": 20}, "depth"),
    ({"model": "transformer"}, "dataset"),  # the transformer needs the token task
    ({"dataset": "modadd"}, "model"),        # and the token task the transformer
    ({"model": "transformer", "dataset": "modadd", "layernorm": "middle"}, "layernorm"),
])
def test_the_new_models_refuse_what_does_not_fit_naming_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values)
    assert err.value.field == field
