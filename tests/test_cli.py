"""The `gradwatch` console script: train (here, and streamed to a server), runs, export, --help."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import ROOT, LiveServer

FAST = ["--dataset", "synthetic", "--depth", "3", "--width", "16", "--eval-every", "10"]
SUMMARY = re.compile(r"^(completed|diverged|stopped): (\d+) steps, loss ", re.MULTILINE)


def gradwatch(*args: str, server: LiveServer | None = None, cwd: Path = ROOT,
              timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the installed console script (the entry point pyproject declares)."""
    script = Path(sys.executable).with_name("gradwatch")
    assert script.exists(), f"{script} is missing: install the project (pip install -e .)"
    cmd = [str(script), *args]
    if server is not None:
        cmd += ["--server", server.url] + ([f"--token={server.token}"] if server.token else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny models: one intra-op thread is fastest
    env.pop("GRADWATCH_TOKEN", None)
    env.pop("GRADWATCH_URL", None)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def has_preset(name: str) -> bool:
    if importlib.util.find_spec("gradwatch.presets") is None:
        return False
    from gradwatch.presets import PRESETS

    return name in PRESETS


@pytest.mark.skipif(not has_preset("explosion"), reason="trainer/presets.py (PRESETS['explosion']) is not there yet")
def test_train_a_preset_prints_a_summary(tmp_path: Path) -> None:
    done = gradwatch("train", "--preset", "explosion", "--steps", "50", cwd=tmp_path)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: the run diverged, as that preset may
    m = SUMMARY.search(done.stdout)
    assert m and int(m.group(2)) <= 50, done.stdout + done.stderr[-2000:]
    assert "step/s" in done.stderr  # tqdm's bar


def test_train_from_flags_shows_a_bar_and_prints_a_summary(tmp_path: Path) -> None:
    done = gradwatch("train", *FAST, "--steps", "50", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    m = SUMMARY.search(done.stdout)
    assert m and m.group(1) == "completed" and m.group(2) == "50", done.stdout
    assert "50/50" in done.stderr  # the progress bar went to the end
    bad = gradwatch("train", "--depth", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "depth" in bad.stderr


@pytest.fixture(scope="module")
def streamed(live_server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One `gradwatch train --server` run, shared by the tests below."""
    name = f"cli-{uuid.uuid4().hex[:6]}"
    done = gradwatch("train", *FAST, "--steps", "40", "--name", name, server=live_server,
                     cwd=tmp_path_factory.mktemp("cli"))
    assert done.returncode == 0, done.stderr[-2000:]
    runs = [r for r in live_server.client.get("/api/runs").json() if r["name"] == name]
    assert len(runs) == 1, runs
    return {"run": runs[0], "stdout": done.stdout, "stderr": done.stderr}


def test_train_with_server_appears_in_the_runs_list(streamed: dict, live_server: LiveServer) -> None:
    run = streamed["run"]
    assert run["kind"] == "external" and run["status"] == "completed" and run["summary"]["step"] == 40
    assert run["config"]["dataset"] == "synthetic" and run["config"]["depth"] == 3  # the full RunConfig
    assert f"streaming run {run['id']}" in streamed["stderr"]
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
    assert hist["step"] == list(range(1, 41)) and hist["val"]["step"] == [10, 20, 30, 40]
    listed = gradwatch("runs", server=live_server)
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "NAME", "STATUS", "KIND", "STEP", "LOSS", "BEST", "ALERTS", "CREATED", "NOTE"]
    mine = [row.split() for row in rows if row.startswith(run["id"])]
    assert mine and mine[0][1:5] == [run["name"], "completed", "external", "40/40"]
    as_json = json.loads(gradwatch("runs", "--json", "--status", "completed", server=live_server).stdout)
    assert run["id"] in [r["id"] for r in as_json] and {r["status"] for r in as_json} == {"completed"}


def test_export_writes_files_that_round_trip(streamed: dict, live_server: LiveServer, tmp_path: Path) -> None:
    run_id = streamed["run"]["id"]
    hist = live_server.client.get(f"/api/runs/{run_id}/metrics", params={"max_points": 100_000}).json()
    names = [layer["name"] for layer in hist["layers"]]

    done = gradwatch("export", run_id, "--format", "csv", "--out", str(tmp_path / "run.csv"), server=live_server)
    assert done.returncode == 0, done.stderr
    with (tmp_path / "run.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == hist["step"]
    assert [float(r["loss"]) for r in rows] == hist["loss"]
    for i, name in enumerate(names):
        assert [float(r[f"grad_norm:{name}"]) for r in rows] == [row[i] for row in hist["grad_norm"]]
    assert [int(r["step"]) for r in rows if r["val_accuracy"]] == hist["val"]["step"]

    done = gradwatch("export", run_id, "--format", "json", server=live_server, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    exported = json.loads((tmp_path / f"gradwatch-{run_id}.json").read_text())  # the default file name
    assert exported["run"]["id"] == run_id and exported["run"]["status"] == "completed"
    for key in ("step", "loss", "grad_norm", "weight_norm", "update_ratio", "val"):
        assert exported["metrics"][key] == hist[key], key

    missing = gradwatch("export", "nosuchrun", server=live_server, cwd=tmp_path)
    assert missing.returncode == 2 and "run nosuchrun not found" in missing.stderr


def test_help_reads_well_and_needs_no_torch() -> None:
    done = gradwatch("--help")
    assert done.returncode == 0
    for command in ("serve", "train", "runs", "export"):
        assert re.search(rf"^\s+{command}\s+\w", done.stdout, re.MULTILINE), done.stdout
    train_help = gradwatch("train", "--help").stdout
    assert "--preset" in train_help and "--server" in train_help
    assert "weight decay on Linear/Conv weights" in train_help  # RunConfig's own comments
    # `gradwatch --help`, `runs` and `export` stay quick: building the parser imports no torch
    probe = subprocess.run([sys.executable, "-c", "import sys; from gradwatch.server.cli import build_parser; "
                            "build_parser(); print('torch' in sys.modules)"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "False", probe.stderr


def test_runs_names_an_unreachable_server() -> None:
    done = gradwatch("runs", "--server", "http://127.0.0.1:9")
    assert done.returncode == 2 and "cannot reach the gradwatch server" in done.stderr


def test_a_generated_token_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--token <token>` must not read as an option: a made-up token starting with "-" is drawn again."""
    from gradwatch.server import settings as settings_mod

    drawn = iter(["-looks-like-an-option", "--also-one", "fine-token-123"])
    monkeypatch.setattr(settings_mod.secrets, "token_urlsafe", lambda n: next(drawn))
    s = settings_mod.Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path)})
    assert s.token == "fine-token-123" and s.token_generated
