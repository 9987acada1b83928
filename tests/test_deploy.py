"""The deployment as written: docker-compose.yml validates (and a broken copy does not), it needs
the token, reserves the GPU, publishes on the loopback only, and the image starts the server with
the same entry point the tests run. No Docker engine needed: `docker-compose config` only parses.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, LiveServer

COMPOSE = ROOT / "docker-compose.yml"
TOKEN = "compose-test-token"


def compose_command() -> list[str]:
    """docker-compose (Debian's package, as CI installs it) or the `docker compose` plugin.
    Missing: a skip on a laptop, a failure in CI, where .ci/run installs it."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI"):
        pytest.fail("docker-compose is missing; CI must install it (apt-get install --no-install-recommends "
                    "docker-compose) to validate the compose file")
    pytest.skip("docker-compose is not installed")


def compose_config(path: Path, token: str | None = TOKEN) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GRADWATCH_", "COMPOSE_"))}
    if token is not None:
        env["GRADWATCH_TOKEN"] = token
    return subprocess.run([*compose_command(), "-f", str(path), "config"], cwd=path.parent, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict:
    """The compose file as compose itself resolves it (anchors merged, variables substituted)."""
    done = compose_config(COMPOSE)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_the_compose_file_validates() -> None:
    done = subprocess.run([*compose_command(), "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "GRADWATCH_TOKEN": TOKEN}, timeout=60)
    assert done.returncode == 0, done.stderr


MUTATIONS = {
    "a misspelt service key": ("  volumes:\n    - gradwatch-data", "  volums:\n    - gradwatch-data"),
    "broken YAML": ("services:\n", "services:\n  gradwatch: [\n"),
    "an undeclared named volume": ("\nvolumes:\n  gradwatch-data:\n", "\n"),
    "ports as a mapping": ('    ports:\n      - "127.0.0.1:', '    ports:\n      host: "127.0.0.1:'),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_broken_copy_fails_validation(mutation: str, tmp_path: Path) -> None:
    old, new = MUTATIONS[mutation]
    source = COMPOSE.read_text()
    assert old in source, f"the mutation {mutation!r} no longer applies: update MUTATIONS"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(source.replace(old, new, 1))
    done = compose_config(broken)
    assert done.returncode != 0, f"{mutation} was accepted:\n{done.stdout[:2000]}"


def test_the_token_is_required() -> None:
    done = compose_config(COMPOSE, token=None)
    assert done.returncode != 0 and "GRADWATCH_TOKEN" in done.stderr, done.stderr
    raw = yaml.safe_load(COMPOSE.read_text())
    for name, service in raw["services"].items():
        if name.startswith("ray-"):  # Ray's own head and workers: no gradwatch server, no token
            continue
        assert service["environment"]["GRADWATCH_TOKEN"].startswith("${GRADWATCH_TOKEN:?"), name


def _published(port: str | dict) -> tuple[str, str, str]:
    """(host ip, host port, container port) from the short or the long port syntax."""
    if isinstance(port, dict):  # compose v2 prints the long syntax
        return port.get("host_ip", ""), str(port.get("published", "")), str(port["target"])
    m = re.fullmatch(r"(?:(?P<ip>[\d.]+|\[[^\]]+\]):)?(?:(?P<host>\d+):)?(?P<target>\d+)(?:/\w+)?", port)
    assert m, f"unexpected port syntax {port!r}"
    return m["ip"] or "", m["host"] or "", m["target"]


def test_the_gpu_is_reserved_and_the_port_is_on_the_loopback_only(resolved: dict) -> None:
    services = resolved["services"]
    gpu = services["gradwatch"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert gpu.get("restart") in ("unless-stopped", "always")
    assert any(v.startswith("gradwatch-data:/data") if isinstance(v, str) else v.get("source") == "gradwatch-data"
               for v in gpu["volumes"])  # a named volume holding the data directory (SQLite's WAL beside it)
    cpu = services["gradwatch-cpu"]
    assert "cpu" in cpu.get("profiles", []) and "deploy" not in cpu  # the variant for hosts without a GPU
    for name, service in services.items():
        ports = [_published(p) for p in service.get("ports", [])]
        assert all(ip == "127.0.0.1" for ip, _, _ in ports), (name, ports)  # Ray's dashboard too
        if "GRADWATCH_TOKEN" in service.get("environment", {}):  # a gradwatch server
            assert ports and all(target == "8000" for _, _, target in ports), (name, ports)


def test_the_ray_profile_points_gradwatch_at_the_head_and_reserves_the_gpus_on_the_worker(resolved: dict) -> None:
    services = resolved["services"]
    ray = {name: s for name, s in services.items() if "ray" in s.get("profiles", [])}
    assert set(ray) == {"ray-head", "ray-worker", "gradwatch-ray"}
    head, worker, server = ray["ray-head"], ray["ray-worker"], ray["gradwatch-ray"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    env = server["environment"]
    assert env["GRADWATCH_LAUNCHER"] == "ray" and env["RAY_ADDRESS"] == "ray-head:6379"
    assert env["GRADWATCH_TOKEN"] == TOKEN and env["GRADWATCH_PUBLIC_URL"].startswith("http")
    assert {head["image"], worker["image"], server["image"]} == {"gradwatch-ray:latest"}  # one Ray, one Python
    assert server["build"]["args"]["EXTRAS"] == head["build"]["args"]["EXTRAS"] == "server,ray"
    # The settings the server gets are ones it accepts.
    from gradwatch.server.settings import Settings

    settings = Settings.from_env({k: str(v) for k, v in env.items()} | {"GRADWATCH_DATA_DIR": "/tmp/unused"})
    assert settings.launcher == "ray" and settings.ray_address == "ray-head:6379"


def _entry_point() -> tuple[str, str]:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["gradwatch"].split(":")
    return module, func


def test_the_image_starts_the_entry_point_the_tests_run(live_server: LiveServer) -> None:
    module, func = _entry_point()
    assert (module, func) == ("gradwatch.server.cli", "main")
    # The image: CMD ["gradwatch", "serve"], the console script pyproject declares.
    cmd_lines = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    assert len(cmd_lines) == 1, cmd_lines
    image_cmd = json.loads(cmd_lines[0][4:])
    assert image_cmd[0] == "gradwatch", image_cmd
    # The tests: LiveServer runs `python -m gradwatch.server.cli serve ...` (read from the live process).
    args = list(live_server.proc.args)
    assert args[args.index("-m") + 1] == module and args[args.index("-m") + 2] == image_cmd[1] == "serve", args
    # ...and `python -m gradwatch.server.cli` calls the same function the console script does.
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    guards = [node for node in tree.body if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test)]
    assert guards and f"{func}()" in ast.unparse(guards[0]), "python -m gradwatch.server.cli must call main()"
    # The installed console script (what `gradwatch` runs in the image) imports that function too.
    script = Path(sys.executable).with_name("gradwatch")
    if script.exists():
        assert f"from {module} import {func}" in script.read_text()
