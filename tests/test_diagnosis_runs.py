"""The diagnosis on real runs: alerts before a blow-up, the blamed layer checked against the
documented reference (gradwatch.diagnosis.reference) computed from the stored history, and quiet
on a healthy run."""

from __future__ import annotations

from gradwatch.config import RunConfig
from gradwatch.diagnosis import reference
from gradwatch.loop import train
from gradwatch.presets import resolve

from .conftest import LiveServer


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
    those above rounding noise, computed here from the recorded norms (it named a key bias)."""
    import numpy as np
    import torch
    from gradwatch.diagnosis import NOISE, Diagnosis
    from gradwatch.probe import watch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=200, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=64, num_labels=2))
    opt = torch.optim.AdamW(model.parameters(), lr=0.3)
    probe = watch(model, opt, stats_every=1)
    diagnosis = Diagnosis(probe.names, 10.0, 2)
    records, alerts = [], []

    def on_step(stats: dict) -> None:
        records.append([*stats["grad_norm"], stats["global_grad_norm"]])
        alerts.extend(e for e in diagnosis.step(stats) if e["type"] == "alert")

    probe.on_step = on_step
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randint(5, 200, (32, 32), generator=g)
        y = (x == 7).any(1).long()
        out = model(input_ids=x, labels=y)
        opt.zero_grad()
        out.loss.backward()
        probe.record(out.loss, (out.logits.argmax(1) == y).float().mean())
        opt.step()
    probe.close()
    first, second = np.array(records)
    names = probe.names
    noise = [n for n, v in zip(names, first[:-1], strict=True) if v < NOISE * first[-1]]
    assert noise and all(".key.bias" in n for n in noise), noise  # the key biases, and only they
    above = second[:-1] >= NOISE * second[-1]
    grew = np.where(above, second[:-1] / first[:-1], -np.inf)
    assert [(a["step"], a["kind"]) for a in alerts] == [(2, "grad_spike")], alerts
    assert alerts[0]["layer"] == names[int(np.argmax(grew))], (alerts[0]["layer"], names[int(np.argmax(grew))])
    assert not any(t["layer"] in noise for t in alerts[0]["top"])
