"""The diagnosis on real runs: alerts before a blow-up, the blamed layer checked against the
documented reference (gradwatch.diagnosis.reference) computed from the stored history, and quiet
on a healthy run."""

from __future__ import annotations

import importlib.util

from gradwatch.config import RunConfig
from gradwatch.diagnosis import reference
from gradwatch.loop import train
from gradwatch.presets import resolve

from .conftest import ROOT, LiveServer


def test_explosion_plain_alerts_first_and_names_the_layer_the_reference_finds(live_server: LiveServer) -> None:
    r = live_server.client.post("/api/runs", json={"preset": "explosion", "config": {"eval_every": 0}})
    assert r.status_code == 201, r.text
    run = live_server.wait_status(r.json()["id"], ("diverged", "completed", "failed"), timeout=120)
    assert run["status"] == "diverged", run
    s = run["summary"]
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics", params={"max_points": 100_000}).json()
    names = [layer["name"] for layer in hist["layers"]]
    assert hist["step"][-1] == s["diverged_step"]  # the non-finite step is stored too

    # The reference, from the stored per-layer history alone.
    ref = reference(names, hist["grad_norm"])
    assert ref is not None and ref["rise"] >= 2  # this blow-up builds over two steps
    assert s["diverged_layer"] in ref["first"], (s["diverged_layer"], ref)
    assert s["diverged_since"] == s["diverged_step"] - ref["rise"]
    assert s["diverged_layer"] != names[0] and s["first_nonfinite_layer"] == names[0]  # the old rule's answer
    assert {t["layer"] for t in s["diverged_top"]} == set(ref["top"])  # the same three, if not in order

    alerts = [e for e in hist["events"] if e["type"] == "alert"]
    spikes = [a for a in alerts if a["kind"] == "grad_spike"]
    assert spikes and spikes[0]["step"] == s["diverged_since"] < s["diverged_step"]  # a warning first
    assert spikes[0]["layer"] == s["diverged_layer"]
    final = alerts[-1]
    assert (final["kind"], final["layer"], final["step"]) == ("nonfinite", s["diverged_layer"], s["diverged_step"])
    assert s["diverged_layer"] in run["error"]
    assert s["alerts"] == len(alerts) and s["first_alert_step"] == spikes[0]["step"]


def test_lr_robustness_plain_0_3_alerts_before_its_two_step_blow_up(one_thread: None) -> None:
    events: list[dict] = []
    result = train(resolve("lr-robustness", {"batchnorm": False, "eval_every": 0}), events.append)
    assert result["status"] == "diverged"
    spikes = [e for e in events if e["type"] == "alert" and e["kind"] == "grad_spike"]
    assert spikes and spikes[0]["step"] <= result["diverged_step"] - 2  # a lead of two steps
    grads = [e["grad_norm"] for e in events if e["type"] == "metrics"]
    ref = reference([x["name"] for x in events[0]["layers"]], grads)
    assert result["diverged_layer"] in ref["first"]


def test_a_default_batchnorm_run_of_2000_steps_fires_no_alert(one_thread: None) -> None:
    events: list[dict] = []
    result = train(RunConfig(batchnorm=True, steps=2000, eval_every=500), events.append)
    assert result["status"] == "completed" and result["val_accuracy"] > 0.9
    assert [e for e in events if e["type"].startswith("alert")] == []
    assert result["alerts"] == 0 and result["best_val_accuracy"] >= result["val_accuracy"]
    assert result["n_classes"] == 10


def test_a_bert_wrecked_by_its_first_step_is_blamed_on_the_layer_that_departed_most(one_thread: None) -> None:
    """A real model with parameters the loss does not depend on: a BERT's attention key biases
    (softmax ignores a shift shared by every key) have gradients of ~1e-12 of the global norm,
    rounding noise that jumps by decades when the rest jumps by one. An AdamW step of lr 0.3
    wrecks the net; the alert at the next step names the layer whose gradient grew most among
    those above rounding noise, computed from the recorded norms (it named a key bias). The run
    is bench/alert_quality_real.py's, which also checks healthy real models stay quiet."""
    spec = importlib.util.spec_from_file_location("alert_quality_real", ROOT / "bench" / "alert_quality_real.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    w = bench.wrecked_bert(0)
    assert w["noise"] and all(".key.bias" in n for n in w["noise"]), w["noise"]  # the key biases, and only they
    assert [(a["step"], a["kind"]) for a in w["alerts"]] == [(2, "grad_spike")], w["alerts"]
    assert w["named"] == w["reference"], w
    assert not any(t["layer"] in w["noise"] for t in w["alerts"][0]["top"])
