"""The trainer on its own: real models, real data, real (tiny) runs on the CPU."""

from __future__ import annotations

import math

import pytest
import torch
from gradwatch import data, models, optim
from gradwatch.config import ConfigError, RunConfig
from gradwatch.loop import Control, train
from gradwatch.probe import watch
from torch import nn
from torch.overrides import TorchFunctionMode

SYNC_CALLS = {"item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__"}


def run_events(**overrides) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    result = train(RunConfig(**overrides), events.append)
    return result, events


def metrics_of(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "metrics"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_batchnorm_present_only_when_configured(model: str) -> None:
    for bn in (False, True):
        cfg = RunConfig(model=model, depth=3, width=8, batchnorm=bn)
        net = models.build(cfg, (1, 8, 8), 10)
        bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
        assert len(bns) == (3 if bn else 0)
        # BN sits right after each hidden Linear/Conv, before the activation
        kinds = [type(m).__name__ for m in net.children()]
        if bn:
            core = "Conv2d" if model == "cnn" else "Linear"
            for i, k in enumerate(kinds):
                if k.startswith("BatchNorm"):
                    assert kinds[i - 1] == core and kinds[i + 1] == "ReLU"


def test_l2_reaches_the_optimizer_on_weights_only() -> None:
    cfg = RunConfig(depth=2, width=8, l2=0.03, batchnorm=True)
    net = models.build(cfg, (1, 8, 8), 10)
    opt = optim.build(net, cfg)
    by_param = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in net.named_parameters():
        expected = 0.03 if p.ndim >= 2 else 0.0  # Linear weights decay; biases and BN γ/β do not
        assert by_param[id(p)] == expected, name
    optim.set_l2(opt, 0.5)
    assert optim.current_l2(opt) == 0.5
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups if not g["gradwatch_l2"])


def test_init_schemes_change_the_weights() -> None:
    stds = {}
    for init in ("default", "kaiming", "xavier", "normal"):
        torch.manual_seed(0)
        net = models.build(RunConfig(width=256, init=init, init_std=0.2), (1, 8, 8), 10)
        stds[init] = net.fc2.weight.std().item()
    assert stds["normal"] == pytest.approx(0.2, rel=0.05)
    assert stds["kaiming"] == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    assert stds["xavier"] == pytest.approx(math.sqrt(2) * math.sqrt(2 / 512), rel=0.05)
    assert stds["default"] == pytest.approx(1 / math.sqrt(3 * 256), rel=0.05)


def test_probe_norms_equal_plain_pytorch() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    probe = watch(net, opt)
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in net.parameters()]
        before = [p.detach().clone() for p in net.parameters()]
        probe.record(loss)
        opt.step()
        stats = probe.latest()
        for i, p in enumerate(net.parameters()):
            ref_g = torch.linalg.vector_norm(grads[i]).item()
            ref_w = torch.linalg.vector_norm(before[i]).item()
            ref_d = torch.linalg.vector_norm(before[i] - p.detach()).item()
            ref_u = ref_d / ref_w if ref_w > 0 else 0.0  # BN β starts at 0
            assert stats["grad_norm"][i] == pytest.approx(ref_g, rel=1e-4)
            assert stats["weight_norm"][i] == pytest.approx(ref_w, rel=1e-4)
            assert stats["update_ratio"][i] == pytest.approx(ref_u, rel=1e-4)
        assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert stats["global_grad_norm"] == pytest.approx(
            torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item(), rel=1e-4)
    assert probe.step == 3
    probe.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks


def test_layers_are_named_in_forward_order() -> None:
    _, events = run_events(steps=1, depth=2, width=8, batchnorm=True)
    names = [layer["name"] for layer in events[0]["layers"]]
    assert names == ["fc1.weight", "bn1.weight", "bn1.bias", "fc2.weight", "bn2.weight", "bn2.bias",
                     "out.weight", "out.bias"]
    assert events[0]["layers"][1]["module"] == "BatchNorm1d"
    assert all(len(m["grad_norm"]) == len(names) for m in metrics_of(events))


def test_a_50_step_digits_run_lowers_the_loss() -> None:
    result, events = run_events(dataset="digits", steps=50, seed=1)
    losses = [m["loss"] for m in metrics_of(events)]
    assert [m["step"] for m in metrics_of(events)] == list(range(1, 51))
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert result["status"] == "completed" and result["val_accuracy"] > 0.3
    assert events[-1]["type"] == "run.finished" and events[-1]["status"] == "completed"


def test_a_non_finite_loss_ends_the_run_diverged() -> None:
    result, events = run_events(dataset="synthetic", steps=100, lr=1e4, momentum=0.9)
    assert result["status"] == "diverged"
    step = result["diverged_step"]
    assert 1 <= step < 100
    last = metrics_of(events)[-1]
    assert last["step"] == step and not (math.isfinite(last["loss"]) and all(map(math.isfinite, last["grad_norm"])))
    assert events[-1]["status"] == "diverged" and f"step {step}" in events[-1]["reason"]


def test_same_seed_gives_the_same_data_order() -> None:
    a = data.Batches(100, 16, seed=3, device=torch.device("cpu"))
    b = data.Batches(100, 16, seed=3, device=torch.device("cpu"))
    c = data.Batches(100, 16, seed=4, device=torch.device("cpu"))
    seq_a = [a.next().tolist() for _ in range(20)]
    assert seq_a == [b.next().tolist() for _ in range(20)]
    assert seq_a != [c.next().tolist() for _ in range(20)]
    r1, e1 = run_events(steps=5, seed=3)
    r2, e2 = run_events(steps=5, seed=3)
    assert [m["loss"] for m in metrics_of(e1)] == [m["loss"] for m in metrics_of(e2)]


def test_one_host_transfer_per_step() -> None:
    """No per-parameter .item()/.cpu(): the probe's one transfer per step, plus eval steps."""

    class CountSyncs(TorchFunctionMode):
        def __init__(self) -> None:
            super().__init__()
            self.calls: dict[str, int] = {}

        def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            name = getattr(func, "__name__", "")
            if name in SYNC_CALLS:
                self.calls[name] = self.calls.get(name, 0) + 1
            return func(*args, **(kwargs or {}))

    def count(steps: int) -> dict[str, int]:
        counter = CountSyncs()
        with counter:
            train(RunConfig(steps=steps, depth=6, eval_every=10), lambda e: None)
        return counter.calls

    short, long = count(30), count(60)
    assert short["tolist"] == 30 and long["tolist"] == 60  # the probe's one transfer per step
    assert short["item"] == 2 * (3 + 1)  # val loss + accuracy on eval steps 10, 20, 30 and at the end
    # Everything else is set-up (the dataset's class count), the same for any number of steps.
    rest = {k: v for k, v in long.items() if k not in ("tolist", "item")}
    assert rest == {k: v for k, v in short.items() if k not in ("tolist", "item")}
    assert sum(rest.values()) <= 2


def test_control_stop_and_live_l2() -> None:
    control = Control()
    events: list[dict] = []

    def emit(e: dict) -> None:
        events.append(e)
        if e["type"] == "metrics" and e["step"] == 5:
            control.set(l2=0.25)
        if e["type"] == "metrics" and e["step"] == 10:
            control.stop()

    result = train(RunConfig(steps=100), emit, control)
    assert result["status"] == "stopped" and result["step"] == 10
    iv = [e for e in events if e["type"] == "intervention"]
    assert iv == [dict(iv[0], step=6, field="l2", old=0.0, new=0.25)]
    with pytest.raises(ValueError, match="cannot be changed"):
        control.set(depth=3)


@pytest.mark.parametrize(
    ("values", "field"),
    [({"depth": 0}, "depth"), ({"model": "vit"}, "model"), ({"lr": float("nan")}, "lr"),
     ({"steps": 1.5}, "steps"), ({"batchnorm": "yes"}, "batchnorm"), ({"bogus": 1}, "bogus"),
     ({"width": 2048, "depth": 64}, "width")],
)
def test_bad_config_names_the_field(values: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict(values)
    assert err.value.field == field


def test_download_datasets_fail_offline_naming_digits(tmp_path) -> None:
    with pytest.raises(data.DatasetUnavailable, match="digits"):
        data.load("mnist", torch.device("cpu"), tmp_path)
