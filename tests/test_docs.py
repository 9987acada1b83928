"""The documented commands work as written: docs/usage.md's curl example and the README's, run by
bash against a real server (only the host:port and the token are substituted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, LiveServer

USAGE = ROOT / "docs" / "usage.md"


README = ROOT / "README.md"


def curl_example(path: Path = USAGE, marker: str = "curl-example") -> str:
    text = path.read_text()
    m = re.search(rf"<!-- {marker}.*?-->\s*```sh\n(.*?)```\s*<!-- end {marker} -->", text, re.DOTALL)
    assert m, f"{path.name} lost its marked curl example"
    return m.group(1)


def run_example(script: str, server: LiveServer, cwd: Path) -> subprocess.CompletedProcess:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing; .ci/run installs them")
        pytest.skip(f"{', '.join(missing)} not installed")
    assert "localhost:8000" in script and "your-token" in script
    script = script.replace("localhost:8000", f"127.0.0.1:{server.port}").replace("your-token", server.token)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def test_the_readme_curl_example_runs(live_server: LiveServer, tmp_path: Path) -> None:
    run_example(curl_example(README, "readme-curl"), live_server, tmp_path)
    run = next(r for r in live_server.client.get("/api/runs").json() if r["name"] == "deep-bn")
    assert run["config"]["depth"] == 8 and run["config"]["batchnorm"] is True
    assert live_server.wait_status(run["id"], ("stopped",))["summary"].get("step", 0) < 100_000
    hist = live_server.client.get(f"/api/runs/{run['id']}/metrics").json()
    # the PATCH reached the run: in its config while queued, or as an intervention once running
    changed = run["config"]["l2"] == 0.01 or any(
        e["type"] == "intervention" and e["field"] == "l2" and e["new"] == 0.01 for e in hist["events"])
    assert changed, hist["events"]


def test_the_documented_curl_example_runs(live_server: LiveServer, tmp_path: Path) -> None:
    done = run_example(curl_example(), live_server, tmp_path)
    run = next(r for r in live_server.client.get("/api/runs").json() if r["name"] == "bn-on")
    assert re.search(rf"^{run['id']}  \w+  bn-on$", done.stdout, re.MULTILINE), done.stdout  # the list
    assert '"grad_norm_of_first_layer"' in done.stdout  # the metrics query found per-layer data
    header = (tmp_path / "run.csv").read_text().splitlines()[0]
    assert header.startswith("seq,step,time,loss") and "grad_norm:fc1.weight" in header
    error = live_server.run(run["id"])["error"]
    assert '"status": "completed"' in done.stdout and '"step": 200' in done.stdout, (done.stdout, error)
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 1 + 200
    fork = next(r for r in live_server.client.get("/api/runs").json()
                if (r.get("fork") or {}).get("parent") == run["id"])
    assert f'{{"parent":"{run["id"]}","step":100,"asked":100,"changes":{{"l2":0.01}}}}' in done.stdout, done.stdout
    live_server.wait_status(fork["id"], ("completed",))
    assert done.stdout.strip().splitlines()[-1] in ("queued", "running", "stopped")
    long = next(r for r in live_server.client.get("/api/runs").json() if r["name"] == "long")
    assert live_server.wait_status(long["id"], ("stopped",))["summary"].get("step", 0) < 100_000
