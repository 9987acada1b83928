"""The probe against plain PyTorch: every statistic, the public watch() API, and where a run went wrong."""

from __future__ import annotations

import math

import pytest
import torch
from gradwatch import data, models, optim
from gradwatch.config import RunConfig
from gradwatch.diagnosis import first_nonfinite
from gradwatch.loop import train
from gradwatch.probe import watch
from gradwatch.stats import PER_STATS_STEP, PER_STEP
from torch import nn


def small_net() -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear -> ReLU -> Linear, with 5 of the second layer's units dead."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 16, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        net[3].bias[:5] = -100.0  # these units output 0 for every example: dead
    return net


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 36, 3))


def dead_fraction(out: torch.Tensor) -> float:
    per_unit = out.transpose(0, 1).reshape(out.shape[1], -1)  # unit = dim 1, all examples and positions
    return sum(bool((row <= 0).all()) for row in per_unit) / out.shape[1]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])  # SGD: update read from momentum; Adam: weight snapshot
@pytest.mark.parametrize("net_fn", [small_net, small_cnn])
def test_every_statistic_equals_plain_pytorch(opt_name: str, net_fn) -> None:  # noqa: ANN001
    net = net_fn()
    is_cnn = net_fn is small_cnn
    params = list(net.parameters())
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    else:
        opt = torch.optim.Adam(params, lr=0.01)
    acts = {i: m for i, m in enumerate(net) if isinstance(m, (nn.ReLU, nn.Tanh))}
    outs: dict[int, torch.Tensor] = {}
    for i, m in acts.items():  # the reference's own hooks, registered before the probe's
        m.register_forward_hook(lambda mod, inp, out, i=i: outs.__setitem__(i, out.detach().clone()))
    bn = net[1]
    last_running = [bn.running_mean.clone(), bn.running_var.clone()]
    probe = watch(net, opt, stats_every=1)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 1, 6, 6, generator=g) if is_cnn else torch.randn(32, 12, generator=g)
    y = torch.randint(0, 3, (32,), generator=g)
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.clone() for p in params]
        before = [p.detach().clone() for p in params]
        probe.record(loss)
        opt.step()
        stats = probe.latest()
        # Exactly the registry's statistics (gradwatch.stats), each checked by hand below.
        assert [k for k, v in stats.items() if isinstance(v, list)] == list(PER_STEP)
        assert set(stats["stats"]) == {"act_layers", "bn_layers", "bn_feeds", *PER_STATS_STEP}
        for i, p in enumerate(params):
            ref_w = torch.linalg.vector_norm(before[i]).item()
            ref_d = torch.linalg.vector_norm(before[i] - p.detach()).item()
            assert stats["grad_norm"][i] == pytest.approx(torch.linalg.vector_norm(grads[i]).item(), rel=1e-5)
            assert stats["weight_norm"][i] == pytest.approx(ref_w, rel=1e-5)
            assert stats["update_ratio"][i] == pytest.approx(ref_d / ref_w if ref_w > 0 else 0.0, rel=1e-4)
            ref_g = torch.linalg.vector_norm(grads[i]).item()
            assert stats["grad_weight_ratio"][i] == pytest.approx(ref_g / ref_w if ref_w > 0 else 0.0, rel=1e-5)
        assert stats["loss"] == pytest.approx(loss.item(), rel=1e-6)
        assert stats["global_grad_norm"] == pytest.approx(
            torch.linalg.vector_norm(torch.cat([gr.flatten() for gr in grads])).item(), rel=1e-5)

        s = stats["stats"]
        assert s["act_layers"] == [str(i) for i in acts]
        for k, i in enumerate(acts):
            assert s["act_mean"][k] == pytest.approx(outs[i].mean().item(), rel=1e-5, abs=1e-7)
            assert s["act_std"][k] == pytest.approx(outs[i].std().item(), rel=1e-5)
        relus = [k for k, i in enumerate(acts) if isinstance(acts[i], nn.ReLU)]
        for k, i in enumerate(acts):
            if k in relus:
                assert s["dead_frac"][k] == pytest.approx(dead_fraction(outs[i]))
            else:
                assert s["dead_frac"][k] is None  # tanh: no unit is ever exactly dead
        if not is_cnn:
            assert s["dead_frac"][1] >= 5 / 16  # at least the units switched off above
        assert s["bn_layers"] == ["1"] and s["bn_feeds"] == ["0.weight"]
        now = [bn.running_mean, bn.running_var]
        assert s["bn_mean_drift"][0] == pytest.approx(torch.linalg.vector_norm(now[0] - last_running[0]).item(),
                                                      rel=1e-5)
        assert s["bn_var_drift"][0] == pytest.approx(torch.linalg.vector_norm(now[1] - last_running[1]).item(),
                                                     rel=1e-5)
        last_running = [t.clone() for t in now]
        assert s["bn_gamma_norm"][0] == pytest.approx(torch.linalg.vector_norm(before[1]).item(), rel=1e-5)
        assert s["bn_beta_norm"][0] == pytest.approx(torch.linalg.vector_norm(before[2]).item(), rel=1e-5, abs=1e-9)
        w_feed = torch.linalg.vector_norm(before[0]).item()
        assert s["eff_lr"][0] == pytest.approx(opt.param_groups[0]["lr"] / w_feed**2, rel=1e-5)
    probe.close()


class _Mixed(nn.Module):
    """Tensors of one shape several times (stacked/grouped), a 0-d scale, a non-contiguous weight
    and a layer that some steps do not use (its gradient None)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b, self.c = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.t = nn.Parameter(torch.randn(8, 5).t())  # a transposed view: not contiguous
        self.spare = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor, spare: bool) -> torch.Tensor:
        h = self.c(torch.relu(self.b(torch.relu(self.a(x))))) * self.scale
        return self.spare(h) if spare else h @ self.t.t()


@pytest.mark.parametrize("clip", [False, True])
def test_the_weight_snapshot_of_other_optimizers_gives_plain_pytorchs_numbers(clip: bool) -> None:
    """AdamW (the weights are snapshotted to measure the update): grouped shapes, a 0-d parameter,
    a non-contiguous one, a step where a layer got no gradient, and clip_() taking the norms first."""
    net = _Mixed()
    params = list(net.parameters())
    assert not net.t.is_contiguous()
    opt = torch.optim.AdamW(params, lr=0.05)
    probe = watch(net, opt)
    g = torch.Generator().manual_seed(2)
    for step in range(1, 6):
        spare = step % 2 == 0
        x = torch.randn(16, 8, generator=g)
        opt.zero_grad(set_to_none=True)
        net(x, spare).pow(2).mean().backward()
        if clip:
            probe.clip_(0.5)
        grads = [None if p.grad is None else p.grad.clone() for p in params]
        before = [p.detach().clone() for p in params]
        opt.step()
        stats = probe.latest()
        assert stats["step"] == step
        for i, p in enumerate(params):
            ref_w = torch.linalg.vector_norm(before[i]).item()
            ref_d = torch.linalg.vector_norm(before[i] - p.detach()).item()
            ref_g = 0.0 if grads[i] is None else torch.linalg.vector_norm(grads[i]).item()
            if clip and grads[i] is not None:  # the probe reports the norms from before clipping
                assert stats["grad_norm"][i] >= ref_g * (1 - 1e-6)
            else:
                assert stats["grad_norm"][i] == pytest.approx(ref_g, rel=1e-5, abs=1e-12)
            assert stats["weight_norm"][i] == pytest.approx(ref_w, rel=1e-5)
            assert stats["update_ratio"][i] == pytest.approx(ref_d / ref_w, rel=1e-4, abs=1e-12)
    probe.close()


def test_stats_come_every_stats_every_steps_and_skip_eval_passes() -> None:
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    probe = watch(net, opt, stats_every=4)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    seen = []
    for _ in range(9):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        net.eval()
        with torch.no_grad():
            net(x * 100)  # an eval pass between backward and step must not be what is reported
        net.train()
        opt.step()
        if "stats" in probe.latest():
            seen.append((probe.latest()["step"], probe.latest()["stats"]["act_std"][0]))
    assert [s for s, _ in seen] == [1, 4, 8]
    assert all(std < 10 for _, std in seen)  # the x100 eval pass would have given a std in the hundreds
    probe.close()


def test_close_leaves_no_hook_behind() -> None:
    net = small_cnn()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    probe = watch(net, opt, stats_every=2)
    x, y = torch.randn(8, 1, 6, 6), torch.randint(0, 3, (8,))
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()  # step 1 done: step 2 is a stats step, so the forward hooks are armed now
    assert any(m._forward_hooks for m in net.modules())
    probe.close()
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in net.modules())
    net(x).sum().backward()
    opt.step()  # nothing is watching any more
    assert probe.step == 1


@pytest.mark.parametrize("fused", [False, True])
def test_gradscaler_gradients_are_reported_unscaled(fused: bool) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=fused)  # fused: unscaled inside the kernel
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    probe = watch(net, opt)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    opt.zero_grad()
    scaler.scale(nn.functional.cross_entropy(net(x), y)).backward()
    scaled = [torch.linalg.vector_norm(p.grad).item() for p in net.parameters()]
    scaler.step(opt)
    scaler.update()
    assert probe.step == 1
    assert probe.latest()["grad_norm"] == pytest.approx([s / 1024.0 for s in scaled], rel=1e-5)
    if not fused:  # a step the scaler skips never reaches the optimizer, so it is not reported
        opt.zero_grad()
        scaler.scale(nn.functional.cross_entropy(net(x), y) * math.inf).backward()
        scaler.step(opt)
        assert probe.step == 1
    probe.close()


def hand_written_run(cfg: RunConfig) -> list[dict]:
    """The built-in trainer's loop written out by hand around watch(): what a user would write."""
    torch.manual_seed(cfg.seed)
    ds = data.load(cfg.dataset, torch.device("cpu"), None, cfg.seed)
    model = models.build(cfg, ds.shape, ds.n_classes)
    opt = optim.build(model, cfg)
    batches = data.Batches(len(ds.x_train), cfg.batch_size, cfg.seed, torch.device("cpu"))
    records: list[dict] = []
    probe = watch(model, opt, on_step=records.append, stats_every=cfg.stats_every)
    for _ in range(cfg.steps):
        idx = batches.next()
        x, y = ds.x_train[idx], ds.y_train[idx]
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        probe.record(loss, (logits.argmax(1) == y).float().mean())
        opt.step()
    probe.close()
    return records


def test_watch_on_a_hand_written_loop_gives_the_trainers_numbers() -> None:
    cfg = RunConfig(dataset="digits", depth=3, width=16, batchnorm=True, steps=7, stats_every=3, seed=5,
                    eval_every=2, device="cpu")  # eval passes in the trainer only: they must not show
    events: list[dict] = []
    train(cfg, events.append)
    from_trainer = [e for e in events if e["type"] == "metrics"]
    by_hand = hand_written_run(cfg)
    assert [r["step"] for r in by_hand] == [e["step"] for e in from_trainer] == list(range(1, 8))
    assert [r["step"] for r in by_hand if "stats" in r] == [1, 3, 6]
    for mine, theirs in zip(by_hand, from_trainer, strict=True):
        for key in ("loss", "accuracy", "global_grad_norm", "grad_norm", "weight_norm", "update_ratio", "stats"):
            assert mine.get(key) == theirs.get(key), (mine["step"], key)


def test_first_nonfinite_names_the_layer_of_an_injected_nan_in_a_hand_written_loop() -> None:
    net = small_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    probe = watch(net, opt)
    net[3].weight.register_hook(lambda g: g * math.nan)  # only this layer's gradient goes bad
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    grad_norm = probe.latest()["grad_norm"]
    assert first_nonfinite(probe.names, grad_norm) == "3.weight"
    assert sum(not math.isfinite(v) for v in grad_norm) == 1
    probe.close()


def inject(monkeypatch: pytest.MonkeyPatch, param: str, at_step: int, factor: float) -> None:
    """Make the trainer's model multiply one parameter's gradient by `factor` at one step (from 1)."""
    build = models.build

    def build_and_hook(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        model = build(*args, **kwargs)
        calls = [0]

        def hook(g: torch.Tensor) -> torch.Tensor:
            calls[0] += 1
            return g * factor if calls[0] == at_step else g

        model.get_parameter(param).register_hook(hook)
        return model

    monkeypatch.setattr(models, "build", build_and_hook)


def test_diverged_names_the_layer_whose_gradient_got_a_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    inject(monkeypatch, "fc3.weight", at_step=4, factor=math.nan)
    events: list[dict] = []
    result = train(RunConfig(dataset="synthetic", depth=5, width=16, steps=20), events.append)
    assert result["status"] == "diverged"
    assert result["diverged_step"] == 4 and result["diverged_layer"] == "fc3.weight"
    assert "fc3.weight" in events[-1]["reason"] and "step 4" in events[-1]["reason"]
    assert events[-1]["summary"]["diverged_layer"] == "fc3.weight"


def test_a_gradient_spike_alerts_once_naming_its_layer_and_a_steady_run_not_at_all(
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = RunConfig(dataset="digits", depth=3, width=32, steps=45, grad_clip=1.0, alert_factor=10.0, seed=2)
    steady: list[dict] = []
    assert train(cfg, steady.append)["status"] == "completed"
    assert [e for e in steady if e["type"].startswith("alert")] == []

    inject(monkeypatch, "out.bias", at_step=30, factor=1e4)  # the clip keeps the run itself on course
    spiked: list[dict] = []
    result = train(cfg, spiked.append)
    alerts = [e for e in spiked if e["type"] == "alert"]
    assert [(a["step"], a["kind"], a["layer"]) for a in alerts] == [(30, "grad_spike", "out.bias")]
    assert alerts[0]["value"] > 10 * alerts[0]["baseline"] and alerts[0]["top"][0]["layer"] == "out.bias"
    ends = [e for e in spiked if e["type"] == "alert.end"]
    assert [(e["episode"], e["peak_step"], e["layer"]) for e in ends] == [(1, 30, "out.bias")]
    assert result["status"] == "completed" and result["step"] == 45  # an alert does not stop the run
    assert result["alerts"] == 1 and result["first_alert_step"] == 30




@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_a_backward_inside_the_step_closure_reports_what_a_plain_loop_does(opt_name: str) -> None:
    """Lightning's shape: optimizer.step(closure) with the backward in the closure and grads_ready()
    after it. The pre-step hook then takes no norms; the numbers equal a plain loop's, also for a
    parameter that gets no gradient in a step (SGD leaves it, its update is 0)."""
    def make() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        net = nn.ModuleDict({"a": nn.Linear(6, 8), "b": nn.Linear(8, 3), "spare": nn.Linear(8, 3)})
        opt = (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
               else torch.optim.Adam(net.parameters(), lr=0.01))
        return net, opt

    def loss_of(net: nn.Module, step: int, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(net["a"](x))
        head = net["spare"] if step in (2, 3) else net["b"]  # "spare" is used in two steps only
        return head(h).square().mean()

    torch.manual_seed(1)
    xs = [torch.randn(5, 6) for _ in range(6)]
    plain_net, plain_opt = make()
    plain: list[dict] = []
    p1 = watch(plain_net, plain_opt, on_step=plain.append)
    for i, x in enumerate(xs):
        plain_opt.zero_grad(set_to_none=True)
        loss_of(plain_net, i, x).backward()
        plain_opt.step()
    p1.close()

    net, opt = make()
    got: list[dict] = []
    probe = watch(net, opt, on_step=got.append)
    probe.grads_in_closure = True
    for i, x in enumerate(xs):
        opt.zero_grad(set_to_none=True)

        def closure(i: int = i, x: torch.Tensor = x) -> torch.Tensor:
            with torch.enable_grad():
                loss = loss_of(net, i, x)
                loss.backward()
            probe.grads_ready()  # as Lightning's on_before_optimizer_step does
            return loss

        opt.step(closure)
    probe.close()
    assert len(got) == len(plain) == len(xs)
    for a, b in zip(got, plain, strict=True):
        for key in ("grad_norm", "weight_norm", "update_ratio"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-9), (a["step"], key)
    spare = probe.names.index("spare.weight")
    assert got[0]["update_ratio"][spare] == 0 and got[2]["update_ratio"][spare] > 0


def test_each_step_reports_the_learning_rate_it_was_taken_with_under_a_scheduler() -> None:
    torch.manual_seed(0)
    net = nn.Linear(4, 2)
    opt = torch.optim.AdamW(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** k)  # halves after every step
    rows: list[dict] = []
    probe = watch(net, opt, on_step=rows.append)
    for _ in range(4):
        opt.zero_grad()
        net(torch.randn(3, 4)).sum().backward()
        opt.step()
        sched.step()
    probe.close()
    assert [r["lr"] for r in rows] == pytest.approx([0.1, 0.05, 0.025, 0.0125])
