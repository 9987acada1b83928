"""Checkpoints and forks (issue 16): in-process training for the bit-for-bit claims, a real server
with real workers for the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from gradwatch import checkpoint
from gradwatch.config import RunConfig
from gradwatch.diagnosis import reference
from gradwatch.loop import train
from gradwatch.presets import resolve

from .conftest import LiveServer, wait_for

SMALL = {"steps": 40, "checkpoint_every": 10, "dropout": 0.1, "batchnorm": True, "device": "cpu",
         "eval_every": 20, "stats_every": 5, "width": 32}
COMPARED = ("loss", "accuracy", "global_grad_norm", "grad_norm", "weight_norm", "update_ratio", "stats",
            "val_loss", "val_accuracy")


def metrics(events: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {e["step"]: e for e in events if e["type"] == "metrics"}


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in COMPARED)


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """A 40-step CPU run with BN and dropout (RNG and data position both matter), checkpoints every 10."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("parent")
        events: list[dict[str, Any]] = []
        train(RunConfig(**SMALL), events.append, checkpoints=folder)
    finally:
        torch.set_num_threads(threads)
    return folder, events


def test_a_no_change_fork_repeats_its_parent_bit_for_bit(parent: tuple[Path, list], tmp_path: Path,
                                                         one_thread: None) -> None:
    folder, parent_events = parent
    assert checkpoint.steps(folder) == [10, 20, 30, 40]
    events: list[dict[str, Any]] = []
    train(RunConfig(**SMALL), events.append, checkpoints=tmp_path, resume=checkpoint.path_for(folder, 20))
    got, want = metrics(events), metrics(parent_events)
    assert sorted(got) == list(range(20, 41))  # from the fork step on, nothing before
    assert not [e for e in events if e["type"] == "intervention"]
    differ = [s for s in got if not same(got[s], want[s])]
    assert differ == [], f"steps {differ} differ from the parent's"
    assert got[20]["stats"] is not None and got[20]["stats"] == want[20]["stats"]  # BN drift, activations


def test_a_fork_with_l2_differs_from_its_first_step_and_says_so(parent: tuple[Path, list], tmp_path: Path,
                                                                one_thread: None) -> None:
    folder, parent_events = parent
    events: list[dict[str, Any]] = []
    train(RunConfig(**{**SMALL, "l2": 0.05}), events.append, resume=checkpoint.path_for(folder, 20),
          changes={"l2": 0.05})
    first = [e for e in events if e["type"] == "intervention"]
    assert [(e["step"], e["field"], e["old"], e["new"], e["source"]) for e in first] == [(20, "l2", 0.0, 0.05, "fork")]
    got, want = metrics(events), metrics(parent_events)
    # Step 20's forward and gradients are the parent's; the decayed update is not, so from step 21 on
    # the weights differ, and so does every later loss.
    assert got[20]["loss"] == want[20]["loss"] and got[20]["update_ratio"] != want[20]["update_ratio"]
    assert all(got[s]["weight_norm"] != want[s]["weight_norm"] for s in range(21, 41))


def test_a_damaged_or_truncated_checkpoint_is_refused(parent: tuple[Path, list], tmp_path: Path) -> None:
    blob = checkpoint.path_for(parent[0], 20).read_bytes()
    cut, flipped, alien = tmp_path / "cut.pt", tmp_path / "flipped.pt", tmp_path / "alien.pt"
    cut.write_bytes(blob[: len(blob) // 2])
    flipped.write_bytes(blob[:-100] + bytes([blob[-100] ^ 1]) + blob[-99:])
    alien.write_bytes(b"PK\x03\x04 a zip, say a torch.save of someone else's")
    for path, said in ((cut, "truncated"), (flipped, "damaged"), (alien, "not a gradwatch checkpoint")):
        with pytest.raises(checkpoint.CheckpointError, match=said):
            checkpoint.load(path)
        with pytest.raises(checkpoint.CheckpointError, match=said):  # a fork from it never starts
            train(RunConfig(**SMALL), lambda e: None, resume=path)


def test_checkpoints_are_bounded_spread_and_keep_the_protected_one() -> None:
    have = list(range(10, 1010, 10))
    gone = checkpoint.thin(have, 8, protected=[530])
    kept = sorted(set(have) - set(gone))
    assert len(kept) == 8 and kept[0] == 10 and kept[-1] == 1000 and 530 in kept
    gaps = [b - a for a, b in zip(kept, kept[1:], strict=False)]
    assert max(gaps) <= 4 * min(gaps)  # spread over the run, not bunched at one end


def test_a_run_keeps_at_most_checkpoint_keep(tmp_path: Path, one_thread: None) -> None:
    train(RunConfig(**{**SMALL, "dropout": 0.0, "steps": 60, "checkpoint_every": 5, "checkpoint_keep": 4}),
          lambda e: None, checkpoints=tmp_path)
    assert len(checkpoint.steps(tmp_path)) == 4 and checkpoint.steps(tmp_path)[-1] == 60
    assert [p.name for p in tmp_path.iterdir() if not checkpoint.NAME.fullmatch(p.name)] == []  # no temporaries


def test_a_diverged_explosion_retried_with_clipping_completes(tmp_path: Path, one_thread: None) -> None:
    cfg = resolve("explosion", {"steps": 60, "device": "cpu"})
    events: list[dict[str, Any]] = []
    summary = train(cfg, events.append, checkpoints=tmp_path)
    assert summary["status"] == "diverged"
    at = summary["checkpoint_before_divergence"]
    assert at <= summary["step"] and at in checkpoint.steps(tmp_path)
    fork = resolve("explosion", {"steps": 60, "device": "cpu", "grad_clip": 1.0})
    forked: list[dict[str, Any]] = []
    again = train(fork, forked.append, resume=checkpoint.path_for(tmp_path, at), changes={"grad_clip": 1.0})
    assert again["status"] == "completed", again["reason"]
    assert min(metrics(forked)) == at and max(metrics(forked)) == 60


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")


@pytest.mark.parametrize("preset, over", [("explosion", {"device": "cpu"}),
                                          # seed 3: not one the detector's constants were chosen on
                                          ("lr-robustness", {"device": "cpu", "batchnorm": False, "seed": 3}),
                                          # CUDA reads each step's norms back a step late: the
                                          # checkpoint must still hold the detector's state of its step
                                          pytest.param("explosion", {"device": "cuda"}, marks=CUDA)])
def test_a_no_change_fork_of_a_diverging_run_judges_it_as_its_parent_did(preset: str, over: dict[str, Any],
                                                                         tmp_path: Path, one_thread: None) -> None:
    """The checkpoint keeps the alert detector's baselines: a fork repeating its parent's steps
    gives the same alerts and blames the same layer, from the same step, which is the layer the
    reference finds in the recorded history (the parent's steps before the fork, then the fork's).
    (With fresh baselines, knowing only its own first steps, the fork of the explosion preset
    blamed fc6.bias from step 12 where its parent blamed fc14.weight from 13.)"""
    cfg = resolve(preset, {"steps": 60, "eval_every": 0, **over})
    events: list[dict[str, Any]] = []
    summary = train(cfg, events.append, checkpoints=tmp_path)
    at = summary["checkpoint_before_divergence"]
    assert summary["status"] == "diverged" and at < summary["diverged_step"], summary
    forked: list[dict[str, Any]] = []
    again = train(cfg, forked.append, resume=checkpoint.path_for(tmp_path, at))

    def alerts(evs: list[dict[str, Any]]) -> list[tuple]:
        return [(e["step"], e["kind"], e.get("layer"), e.get("since"), e["message"])
                for e in evs if e["type"] == "alert" and e["step"] >= at]

    assert alerts(forked) == alerts(events) and alerts(events), (alerts(forked), alerts(events))
    keys = ("status", "diverged_step", "diverged_layer", "diverged_since", "diverged_top", "first_nonfinite_layer")
    assert {k: again[k] for k in keys} == {k: summary[k] for k in keys}
    history = [e["grad_norm"] for e in events if e["type"] == "metrics" and e["step"] < at]
    history += [e["grad_norm"] for e in forked if e["type"] == "metrics"]
    ref = reference([layer["name"] for layer in forked[0]["layers"]], history)
    assert again["diverged_layer"] in ref["first"], (again["diverged_layer"], ref)
    assert again["diverged_since"] == again["diverged_step"] - ref["rise"], (again, ref)


# ---- the API, with a real server and real workers ------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    s = LiveServer(tmp_path_factory.mktemp("forks") / "data", env={"GRADWATCH_MAX_CONCURRENT": "2"}).start()
    yield s
    s.stop()


SLOW = 240  # seconds a run may take to end on a busy 2-core machine (it takes ~5 s when idle)
QUICK = {"steps": 30, "checkpoint_every": 10, "eval_every": 10, "device": "cpu", "width": 16, "depth": 2}


def test_fork_over_the_api_reproduces_and_records_its_parent(server: LiveServer) -> None:
    parent = server.create_run(QUICK)
    server.wait_status(parent["id"], ("completed",), timeout=SLOW)
    assert server.client.get(f"/api/runs/{parent['id']}/checkpoints").json()["steps"] == [10, 20, 30]
    r = server.client.post(f"/api/runs/{parent['id']}/fork", json={"step": 15, "changes": {}})
    assert r.status_code == 201, r.text
    fork = r.json()
    assert fork["fork"] == {"parent": parent["id"], "step": 10, "asked": 15, "changes": {}}
    server.wait_status(fork["id"], ("completed",), timeout=SLOW)
    got = server.client.get(f"/api/runs/{fork['id']}/metrics").json()
    want = server.client.get(f"/api/runs/{parent['id']}/metrics").json()
    assert got["step"] == list(range(10, 31))
    assert got["loss"] == want["loss"][9:] and got["grad_norm"] == want["grad_norm"][9:]


def test_fork_refusals_name_the_reason(server: LiveServer) -> None:
    parent = server.create_run(QUICK)
    server.wait_status(parent["id"], ("completed",), timeout=SLOW)
    url = f"/api/runs/{parent['id']}/fork"
    r = server.client.post(url, json={"step": 5})
    assert r.status_code == 409 and "nearest is at step 10" in r.json()["detail"]
    for field, value in (("width", 32), ("batchnorm", True), ("optimizer", "adam"), ("dataset", "synthetic")):
        r = server.client.post(url, json={"step": 20, "changes": {field: value}})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"][-1] == field and "cannot change" in r.json()["detail"][0]["msg"]
    r = server.client.post(url, json={"step": 20, "changes": {"lr": -1}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "lr"
    cli = [sys.executable, "-m", "gradwatch.server.cli", "fork", parent["id"], "--server", server.url,
           "--token", server.token]
    out = subprocess.run([*cli, "--step", "25", "--l2", "0.01"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    made = server.run(out.stdout.split()[0])
    assert made["fork"] == {"parent": parent["id"], "step": 20, "asked": 25, "changes": {"l2": 0.01}}
    assert made["config"]["l2"] == 0.01
    out = subprocess.run([*cli, "--step", "3"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "nearest is at step 10" in out.stderr
    out = subprocess.run([*cli, "--step", "20", "--lr", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--lr: must be between" in out.stderr
    ckpt = server.data_dir / "runs" / parent["id"] / "checkpoints" / "step-00000020.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    r = server.client.post(url, json={"step": 25})
    assert r.status_code == 409 and "truncated" in r.json()["detail"]


def test_forking_a_running_run_and_deleting_removes_checkpoints(server: LiveServer) -> None:
    parent = server.create_run({**QUICK, "steps": 100_000, "checkpoint_keep": 3})
    folder = server.data_dir / "runs" / parent["id"]
    wait_for(lambda: len(checkpoint.steps(folder / "checkpoints")) >= 2, timeout=SLOW, what="two checkpoints")
    r = server.client.post(f"/api/runs/{parent['id']}/fork", json={"step": 100_000,
                                                                  "changes": {"lr": 0.01, "steps": 300}})
    assert r.status_code == 201, r.text
    fork = r.json()
    assert server.run(parent["id"])["status"] == "running"
    server.wait_status(fork["id"], ("completed",), timeout=SLOW)
    events = server.client.get(f"/api/runs/{fork['id']}/metrics?max_points=2").json()["events"]
    assert [(e["field"], e["new"], e["step"]) for e in events if e["type"] == "intervention"] == \
        [("lr", 0.01, fork["fork"]["step"])]
    server.client.post(f"/api/runs/{parent['id']}/stop")
    server.wait_status(parent["id"], ("stopped",), timeout=SLOW)
    assert len(checkpoint.steps(folder / "checkpoints")) == 3  # checkpoint_keep, of many written
    assert server.client.delete(f"/api/runs/{parent['id']}").status_code == 204
    assert not folder.exists()
    assert (server.data_dir / "runs" / fork["id"]).exists()  # the fork keeps its own
