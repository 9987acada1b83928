"""The documented commands work as written: docs/usage.md's curl example, run by bash against a
real server (only the host:port and the token are substituted)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import ROOT, LiveServer

USAGE = ROOT / "docs" / "usage.md"


def curl_example() -> str:
    text = USAGE.read_text()
    m = re.search(r"<!-- curl-example.*?-->\s*```sh\n(.*?)```\s*<!-- end curl-example -->", text, re.DOTALL)
    assert m, "docs/usage.md lost its marked curl example"
    return m.group(1)


def test_the_documented_curl_example_runs(live_server: LiveServer, tmp_path: Path) -> None:
    missing = [tool for tool in ("bash", "curl", "jq") if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"{', '.join(missing)} missing; .ci/run installs them")
        pytest.skip(f"{', '.join(missing)} not installed")
    script = curl_example()
    assert "localhost:8000" in script and "your-token" in script
    script = script.replace("localhost:8000", f"127.0.0.1:{live_server.port}")
    script = script.replace("your-token", live_server.token or "")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADWATCH_")}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    run = next(r for r in live_server.client.get("/api/runs").json() if r["name"] == "bn-on")
    assert re.search(rf"^{run['id']}  \w+  bn-on$", done.stdout, re.MULTILINE), done.stdout  # the list
    assert '"grad_norm_of_first_layer"' in done.stdout  # the metrics query found per-layer data
    header = (tmp_path / "run.csv").read_text().splitlines()[0]
    assert header.startswith("seq,step,time,loss") and "grad_norm:fc1.weight" in header
    error = live_server.run(run["id"])["error"]
    assert '"status": "completed"' in done.stdout and '"step": 200' in done.stdout, (done.stdout, error)
    assert len((tmp_path / "run.csv").read_text().splitlines()) == 1 + 200
    assert done.stdout.strip().splitlines()[-1] in ("queued", "running", "stopped")
    long = next(r for r in live_server.client.get("/api/runs").json() if r["name"] == "long")
    assert live_server.wait_status(long["id"], ("stopped",))["summary"].get("step", 0) < 100_000
