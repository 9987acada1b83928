"""Schemathesis against the app's own OpenAPI schema, on a real server with real workers.

With the token: no 5xx and no response that breaks its schema, over at least 500 generated
requests (coverage, fuzzing and stateful phases: runs created, read, changed, stopped, deleted).
Without it: every request but /api/health and the sign-in is refused with 401 or 403. Each run is
the `st` CLI, so its report (and the seed to replay a failure) is in the test's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, LiveServer

ST = str(Path(sys.executable).parent / "st")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    s = LiveServer(tmp_path_factory.mktemp("fuzz") / "data",
                   env={"GRADWATCH_MAX_CONCURRENT": "1", "GRADWATCH_MAX_QUEUED": "20"}).start()
    yield s
    for run in s.client.get("/api/runs").json():  # the fuzzer's runs: stop their workers
        s.client.delete(f"/api/runs/{run['id']}")
    s.stop()


def schemathesis_run(args: list[str], cwd: Path, hooks: str | None = None) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if hooks:
        env["SCHEMATHESIS_HOOKS"] = hooks
    p = subprocess.run([ST, "run", *args, "--report", "json", "--report-dir", str(cwd / "report"),
                        "--no-color", "--request-timeout", "30",
                        # One seed: CI runs the same cases every time (a new finding is a change's doing);
                        # GRADWATCH_FUZZ_SEED=random explores further.
                        *([] if os.environ.get("GRADWATCH_FUZZ_SEED") == "random"
                          else ["--seed", os.environ.get("GRADWATCH_FUZZ_SEED", "20261126")])],
                       cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    reports = sorted((cwd / "report").glob("*.json"))
    assert reports, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(reports[-1].read_text()), p.stdout[-6000:]


def test_with_the_token_no_request_gets_a_5xx_or_an_answer_off_its_schema(server: LiveServer,
                                                                        tmp_path: Path) -> None:
    report, out = schemathesis_run(
        [f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {server.token}",
         "--checks", "not_a_server_error,response_schema_conformance", "--max-examples", "30",
         "--phases", "coverage,fuzzing,stateful"], tmp_path)
    assert report["test_cases"]["generated"] >= 500, report["test_cases"]
    assert report["operations"]["tested"] == report["operations"]["total"] >= 10
    assert report["phases"]["stateful"]["status"] == "success", report["phases"]
    assert report["failures"] == [] and report["errors"] == [], out
    assert report["exit_code"] == 0, out


def test_without_the_token_every_request_is_refused(server: LiveServer, tmp_path: Path) -> None:
    schema = tmp_path / "openapi.json"
    schema.write_text(server.client.get("/openapi.json").text)  # the schema itself needs the token
    report, out = schemathesis_run(
        [str(schema), "--url", server.url, "--checks", "refused_without_the_token", "--max-examples", "25",
         "--phases", "coverage,fuzzing", "--exclude-path", "/api/health",  # public by design,
         "--exclude-path", "/api/login"],  # as signing in is (its 401 is for a wrong token, 422 for a bad body)
        tmp_path, hooks="tests.fuzz_checks")
    assert report["test_cases"]["generated"] >= 300, report["test_cases"]
    assert report["failures"] == [] and report["errors"] == [], out
    assert report["exit_code"] == 0, out
