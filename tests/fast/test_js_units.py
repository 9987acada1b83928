"""The page's pure JavaScript modules (frontend/js: diagnosis, colors, smoothing, URL state,
series buffers) under Node's own test runner: tests/js/*.test.mjs, no browser. In CI a missing
`node` is a failure (.ci/run installs Debian's nodejs); elsewhere the test skips and says why."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ..conftest import ROOT


def node_or_skip() -> str:
    """Node's path; in CI a missing one fails (.ci/run installs Debian's nodejs), elsewhere it skips."""
    node = shutil.which("node") or shutil.which("nodejs")
    if node is None:
        if os.environ.get("CI"):
            pytest.fail("node is not installed: .ci/run installs Debian's nodejs")
        pytest.skip("node is not installed (apt-get install -y nodejs)")
    return node


def test_the_pure_frontend_modules_pass_their_node_tests() -> None:
    out = subprocess.run([node_or_skip(), "--test", "tests/js/"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "# fail 0" in out.stdout and "# pass 0" not in out.stdout, out.stdout[-2000:]
