"""Presets that teach: each one starts, `explosion` shows what it says, and the API serves them."""

from __future__ import annotations

import pytest
from gradwatch.config import ConfigError, RunConfig
from gradwatch.data import DatasetUnavailable
from gradwatch.loop import train
from gradwatch.presets import PRESETS, resolve

from .conftest import LiveServer

CASES = [(p.name, v.name) for p in PRESETS.values() for v in p.variants]
QUICK = {"steps": 3, "eval_every": 0, "device": "cpu"}


@pytest.mark.parametrize(("preset", "variant"), CASES)
def test_every_preset_variant_starts(preset: str, variant: str, tmp_path) -> None:
    cfg = resolve(preset, {**next(v for v in PRESETS[preset].variants if v.name == variant).config, **QUICK})
    events: list[dict] = []
    if cfg.dataset == "mnist":  # no internet here: it must fail saying what works offline
        with pytest.raises(DatasetUnavailable, match="digits"):
            train(cfg, events.append, data_dir=tmp_path)
        return
    result = train(cfg, events.append)
    assert result["status"] == "completed" and result["step"] == 3
    metrics = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert "stats" in metrics[0] and len(metrics[0]["stats"]["act_layers"]) == cfg.depth


CLAIMED = [(p.name, v.name) for p in PRESETS.values() for v in p.variants if v.checks]


def facts(result: dict, events: list[dict]) -> dict:
    """What a variant's `checks` speak of, measured on a real run's events (Variant.checks)."""
    names = [layer["name"] for layer in events[0]["layers"]]
    metrics = [e for e in events if e["type"] == "metrics"]
    stats = [e["stats"] for e in metrics if "stats" in e]

    def mean(values: list) -> float | None:
        known = [v for v in values if v is not None]
        return sum(known) / len(known) if known else None

    out = {"status": result["status"], "diverged_step": result["diverged_step"], "val": result["val_accuracy"],
           "best_val": result["best_val_accuracy"],
           "alerts": [[e["step"], e["kind"]] for e in events if e["type"] == "alert"],
           "alerted": any(e["type"] == "alert" and e["kind"] != "nonfinite" for e in events),
           "dead": mean(stats[-1]["dead_frac"]), "eff_lr": (mean(stats[0]["eff_lr"]), mean(stats[-1]["eff_lr"]))}
    if "fc4.weight" in names:
        i = names.index("fc4.weight")
        out["w4"] = (metrics[0]["weight_norm"][i], metrics[-1]["weight_norm"][i])
    if "fc32.weight" in names:
        out["grad_fc1_fc32"] = (metrics[0]["grad_norm"][names.index("fc1.weight")]
                                / metrics[0]["grad_norm"][names.index("fc32.weight")])
    return out


def holds(claim: object, value: object) -> bool:
    """A (low, high) range holds a number; a pair of ranges a pair; anything else is equal."""
    if isinstance(claim, tuple) and claim and isinstance(claim[0], tuple):
        return value is not None and all(holds(c, v) for c, v in zip(claim, value, strict=True))
    if isinstance(claim, tuple):
        return value is not None and claim[0] <= value <= claim[1]
    return claim == value


@pytest.mark.parametrize(("preset", "variant"), CLAIMED)
def test_every_claim_of_a_preset_variant_holds_on_a_real_run(preset: str, variant: str, one_thread: None) -> None:
    v = next(v for v in PRESETS[preset].variants if v.name == variant)
    events: list[dict] = []
    result = train(resolve(preset, {**v.config, "device": "cpu"}), events.append)
    measured = facts(result, events)
    wrong = {k: (claim, measured[k]) for k, claim in v.checks.items() if not holds(claim, measured[k])}
    assert wrong == {}, f"{preset} {variant}: claimed vs measured {wrong} (its text: {v.expect!r})"


def test_explosion_diverges_without_bn_and_trains_with_it() -> None:
    plain = train(resolve("explosion", {"steps": 40, "eval_every": 0}), lambda e: None)
    assert plain["status"] == "diverged" and plain["diverged_step"] <= 40 and plain["diverged_layer"]
    bn_events: list[dict] = []
    bn = train(resolve("explosion", {"batchnorm": True, "steps": 40, "eval_every": 0}), bn_events.append)
    assert bn["status"] == "completed" and bn["step"] == 40
    losses = [e["loss"] for e in bn_events if e["type"] == "metrics"]
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])  # it learns, not just survives


def test_preset_fields_come_first_and_given_fields_override() -> None:
    cfg = resolve("explosion", {"batchnorm": True, "lr": 0.1})
    assert (cfg.depth, cfg.init, cfg.batchnorm, cfg.lr) == (20, "kaiming", True, 0.1)
    assert cfg.stats_every == RunConfig().stats_every  # untouched by the preset: the default
    with pytest.raises(ConfigError) as err:
        resolve("no-such-preset")
    assert err.value.field == "preset"
    with pytest.raises(ConfigError) as err:
        resolve("bn-depth", {"width": 2048, "depth": 64})
    assert err.value.field == "width"


def test_the_api_lists_presets_and_launches_one_with_overrides(live_server: LiveServer) -> None:
    listed = live_server.client.get("/api/presets")
    assert listed.status_code == 200
    by_name = {p["name"]: p for p in listed.json()}
    assert set(by_name) == {"explosion", "bn-depth", "l2-bn", "lr-robustness", "mnist-cnn"}
    explosion = by_name["explosion"]
    assert explosion["explanation"] and explosion["config"] == resolve("explosion").to_dict()
    assert {v["name"]: v["config"] for v in explosion["variants"]}["bn"] == {"batchnorm": True}

    r = live_server.client.post("/api/runs", json={"preset": "explosion",
                                                   "config": {"batchnorm": True, "steps": 5, "eval_every": 0}})
    assert r.status_code == 201, r.text
    run = r.json()
    assert run["name"] == "explosion"
    assert run["config"] == resolve("explosion", {"batchnorm": True, "steps": 5, "eval_every": 0}).to_dict()
    done = live_server.wait_status(run["id"], ("completed", "failed"), timeout=120)
    assert done["status"] == "completed" and done["summary"]["step"] == 5

    bad = live_server.client.post("/api/runs", json={"preset": "nope", "config": {}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "preset"
    too_big = live_server.client.post("/api/runs", json={"preset": "bn-depth", "config": {"width": 2048, "depth": 64}})
    assert too_big.status_code == 422 and too_big.json()["detail"][0]["loc"] == ["body", "config", "width"]
    external = live_server.client.post("/api/runs", json={"preset": "explosion", "external": True, "config": {}})
    assert external.status_code == 422 and external.json()["detail"][0]["loc"][-1] == "preset"
