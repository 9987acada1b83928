"""The detector (trainer/diagnosis.py) on synthetic sequences: pure functions, no training."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gradwatch.diagnosis import Detector, Diagnosis, not_learning, reference

NAMES = [f"fc{i}.weight" for i in range(1, 9)]


def feed(det: Detector, grads: np.ndarray, loss: np.ndarray | None = None) -> list[dict]:
    """Every step of a (steps, layers) sequence of gradient norms; the events it gave."""
    out = []
    for t, g in enumerate(grads, start=1):
        lv = 1.0 if loss is None else float(loss[t - 1])
        out += det.update(t, g.tolist(), float(np.sqrt((g * g).sum())), lv)
    return out


def alerts(events: list[dict]) -> list[dict]:
    return [e for e in events if e["type"] == "alert"]


def test_healthy_noise_around_a_collapsing_median_gives_no_alert() -> None:
    # A converging net: the typical gradient falls 1000x over 3000 steps while hard batches still
    # come (log-normal noise, sigma 1: a hard batch is often 10-30x the median of its neighbours).
    rng = np.random.default_rng(0)
    steps = 3000
    trend = np.linspace(0.0, math.log(1e-3), steps)[:, None]
    grads = np.exp(trend + rng.normal(0.0, 1.0, (steps, len(NAMES))))
    loss = np.exp(np.linspace(math.log(2.3), math.log(1e-3), steps) + rng.normal(0.0, 1.0, steps))
    spread = grads.max() / grads[-200:].min()
    assert spread > 1e4  # the noise the old rule alerted on ("0.21 is over 10x its median 0.003")
    assert alerts(feed(Detector(NAMES), grads, loss)) == []


def test_slow_drift_gives_no_alert() -> None:
    rng = np.random.default_rng(1)
    steps = 2000
    trend = np.linspace(0.0, math.log(1e4), steps)[:, None]  # 10,000x growth, but slowly (x1.005 a step)
    grads = np.exp(trend + rng.normal(0.0, 0.1, (steps, len(NAMES))))
    assert alerts(feed(Detector(NAMES), grads)) == []


def test_a_two_step_blow_up_alerts_at_its_first_step() -> None:
    rng = np.random.default_rng(2)
    grads = np.exp(rng.normal(0.0, 0.5, (8, len(NAMES))))  # 8 ordinary steps
    grads = np.vstack([grads, grads[-1] * 500, grads[-1] * 1e9])  # steps 9, 10 (then NaN at 11)
    grads[-2, 3] *= 4  # fc4 leads the first step of the blow-up
    det = Detector(NAMES)
    got = alerts(feed(det, grads))
    assert [(a["step"], a["kind"]) for a in got] == [(9, "grad_spike")]
    assert got[0]["layer"] == "fc4.weight" and got[0]["ratio"] > 500
    where = det.attribute(11, [math.nan] * len(NAMES))
    assert where["layer"] == "fc4.weight" and where["since"] == 9
    assert where["first_nonfinite_layer"] == "fc1.weight"  # the old rule: the first layer, always


def test_a_single_layer_spike_names_that_layer_and_is_one_episode() -> None:
    rng = np.random.default_rng(3)
    grads = np.exp(rng.normal(0.0, 0.3, (200, len(NAMES))))
    grads[100:104, 5] *= [50, 300, 800, 40]  # fc6 spikes for 4 steps, peak at step 103
    events = feed(Detector(NAMES), grads)
    got = alerts(events)
    assert len(got) == 1 and got[0]["step"] == 101 and got[0]["layer"] == "fc6.weight"
    assert got[0]["top"][0]["layer"] == "fc6.weight" and got[0]["top"][0]["ratio"] == pytest.approx(got[0]["ratio"])
    assert got[0]["value"] == pytest.approx(grads[100, 5]) and got[0]["baseline"] < got[0]["value"] / 10
    ends = [e for e in events if e["type"] == "alert.end"]
    assert len(ends) == 1 and ends[0]["episode"] == got[0]["episode"] == 1
    assert ends[0]["peak_step"] == 103 and ends[0]["layer"] == "fc6.weight" and ends[0]["peak_ratio"] > 500


def test_a_loss_spike_with_normal_gradients_is_a_loss_spike() -> None:
    rng = np.random.default_rng(4)
    grads = np.exp(rng.normal(0.0, 0.3, (300, len(NAMES))))
    loss = np.exp(rng.normal(math.log(0.5), 0.2, 300))
    loss[150] = 80.0  # a bad batch, or a label bug: the loss jumps, the gradients do not
    got = alerts(feed(Detector(NAMES), grads, loss))
    assert [(a["step"], a["kind"]) for a in got] == [(151, "loss_spike")]
    assert got[0]["value"] == pytest.approx(80.0) and got[0]["ratio"] > 50


def test_the_first_steps_alert_only_on_a_jump_over_everything_seen() -> None:
    # Before the spread is known, a 10x rise over the baseline (and 3x over the highest it has
    # been) alerts on its own: that is how a blow-up at step 2 or 3 gets a warning at all.
    calm = Detector(NAMES)
    early = np.ones((4, len(NAMES))) * np.array([[4.0], [2.0], [1.0], [6.0]])  # init transients
    assert alerts(feed(calm, early)) == []
    jump = Detector(NAMES)
    got = alerts(feed(jump, np.ones((3, len(NAMES))) * np.array([[10.0], [300.0], [1e6]])))
    assert [(a["step"], a["kind"]) for a in got] == [(2, "grad_spike")]
    zeros = np.zeros(len(NAMES))  # an unused layer's gradient is 0: not a departure, not a baseline
    assert calm.update(5, zeros.tolist(), 0.0, 1.0) == []


def test_diagnosis_summary_counts_alerts_and_names_the_origin_on_divergence() -> None:
    dg = Diagnosis(NAMES, factor=10.0, n_classes=10)
    rng = np.random.default_rng(5)
    g = np.exp(rng.normal(0.0, 0.3, (30, len(NAMES))))
    g[25:] *= np.array([1, 1, 1, 1, 1, 1, 1e3, 1])  # fc7 departs at step 26 ...
    g[27:] *= 1e3  # ... then every layer
    for t in range(1, 31):
        dg.step({"step": t, "loss": 1.0, "accuracy": 0.5, "grad_norm": g[t - 1].tolist(),
                 "global_grad_norm": float(np.linalg.norm(g[t - 1]))})
    dg.validated(0.9, 0.42)
    dg.validated(1.2, 0.31)
    out = dg.step({"step": 31, "loss": math.inf, "accuracy": 0.1, "grad_norm": [math.nan] * len(NAMES),
                   "global_grad_norm": math.nan})
    s = dg.summary
    assert s["diverged_step"] == 31 and s["diverged_layer"] == "fc7.weight" and s["diverged_since"] == 26
    assert s["first_nonfinite_layer"] == "fc1.weight"
    assert s["alerts"] == 2 and s["first_alert_step"] == 26  # one grad_spike episode, then nonfinite
    assert s["best_val_accuracy"] == 0.42 and s["val_accuracy"] == 0.31
    assert out[0]["kind"] == "nonfinite" and "fc7.weight" in out[0]["message"]
    assert dg.reason == out[0]["message"]
    assert dg.step({"step": 32, "loss": 1.0, "accuracy": 0.1, "grad_norm": [1.0] * len(NAMES),
                    "global_grad_norm": 1.0}) == []  # diagnosed once; an own loop may go on


def test_an_own_loop_without_a_loss_is_not_diverged() -> None:
    dg = Diagnosis(NAMES, loss_given=False)
    dg.step({"step": 1, "loss": math.nan, "accuracy": math.nan, "grad_norm": [1.0] * len(NAMES),
             "global_grad_norm": 2.8})
    assert dg.reason is None and dg.summary["diverged_step"] is None


@pytest.mark.parametrize(("acc", "classes", "expected"), [
    (0.109, 10, True), (0.149, 10, True), (0.16, 10, False), (0.52, 2, True), (0.6, 2, False),
    (None, 10, False), (0.1, None, False), (math.nan, 10, False)])
def test_not_learning_is_within_five_points_of_chance(acc: float | None, classes: int | None, expected: bool) -> None:
    assert not_learning(acc, classes) is expected


def test_the_cli_verdict_names_the_diverged_layer_or_says_not_learning() -> None:
    from gradwatch.diagnosis import verdict

    diverged = {"diverged_layer": "fc7.weight", "diverged_step": 15}
    assert verdict("diverged", diverged) == "diverged in fc7.weight at step 15"
    assert verdict("completed", {"val_accuracy": 0.11, "n_classes": 10}) == "not learning"
    assert verdict("completed", {"val_accuracy": 0.9, "n_classes": 10}) == ""
    assert verdict("stopped", {"val_accuracy": 0.11, "n_classes": 10}) == "not learning"  # as the page says
    assert verdict("running", {"val_accuracy": 0.11, "n_classes": 10}) == ""  # it may still learn


def test_a_gradient_at_rounding_noise_is_never_blamed() -> None:
    # Layer 0 stands for an attention key's bias (the loss does not depend on it): its gradient
    # is rounding noise, ~1e-12 of the global norm, and jumps a million-fold when the others jump
    # 100x. The blow-up is blamed on fc4, which leads it; the reference agrees.
    rng = np.random.default_rng(4)
    grads = np.exp(rng.normal(0.0, 0.3, (40, len(NAMES))))
    grads[:, 0] = 1e-12 * np.exp(rng.normal(0.0, 0.5, 40))
    grads[30, 3] *= 100  # fc4 departs first (step 31)
    grads[31] *= 100  # then everything (step 32), the noise layer a million-fold
    grads[31, 0] *= 1e4
    grads = np.vstack([grads[:32], np.full((1, len(NAMES)), math.nan)])
    det = Detector(NAMES)
    got = alerts(feed(det, grads[:32]))
    assert got and all(a["layer"] == "fc4.weight" for a in got), got
    assert all(t["layer"] != NAMES[0] for a in got for t in a["top"])
    where = det.attribute(33, grads[32].tolist())
    assert where["layer"] == "fc4.weight" and where["since"] == 31
    assert NAMES[0] not in [t["layer"] for t in where["top"]]
    ref = reference(NAMES, grads.tolist())
    assert ref["origin"] == "fc4.weight" and NAMES[0] not in ref["top"], ref

    # All at once (a step that wrecks the net): the largest real departure is named, not the noise's.
    grads = np.exp(rng.normal(0.0, 0.3, (31, len(NAMES))))
    grads[:, 0] = 1e-12 * np.exp(rng.normal(0.0, 0.5, 31))
    grads[30] *= 100
    grads[30, 3] *= 10
    grads[30, 0] *= 1e4
    got = alerts(feed(Detector(NAMES), grads))
    assert [(a["step"], a["layer"]) for a in got] == [(31, "fc4.weight")], got

    # A real layer stays real when the rest outgrow it by more than float32 resolves: fc8 departs
    # first (100x), then everything else grows 1e15x, leaving fc8 below 1e-7 of that step's norm.
    grads = np.exp(rng.normal(0.0, 0.3, (33, len(NAMES))))
    grads[30:, 7] *= 100
    grads[31:, :7] *= 1e15
    grads = np.vstack([grads, np.full((1, len(NAMES)), math.nan)])
    assert grads[32, 7] < 1e-7 * np.sqrt((grads[32] ** 2).sum())
    det = Detector(NAMES)
    feed(det, grads[:33])
    where = det.attribute(34, grads[33].tolist())
    ref = reference(NAMES, grads.tolist())
    assert where["layer"] == ref["origin"] == "fc8.weight" and where["since"] == 31 and ref["rise"] == 3, (where, ref)
