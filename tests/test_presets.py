"""Presets that teach: each one starts, `explosion` shows what it says, and the API serves them."""

from __future__ import annotations

import pytest

from trainer.config import ConfigError, RunConfig
from trainer.data import DatasetUnavailable
from trainer.loop import train
from trainer.presets import PRESETS, resolve

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
