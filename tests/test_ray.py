"""The Ray launcher against a real local Ray cluster (issue 12): a head and a second node joined
with `ray start --address`, one CPU each and a custom resource each (gw_head, gw_node2), and a
gradwatch server with GRADWATCH_LAUNCHER=ray.

No Ray process may reach any address but loopback, so everything here (the cluster, the server,
the clients) runs inside a network namespace that has only `lo`: the one test of the outer
session starts `unshare -n` (root, as in CI) around a second pytest session of this file, in
which the other tests run, and which fails unless the namespace has only `lo` before any Ray
process starts. Outside CI, without root, unshare or Ray, they skip saying why; with CI=true
that is a failure. One cluster for the module; the node-stopping test comes last.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, LiveServer, free_port, wait_for

INNER = os.environ.get("GRADWATCH_RAY_NETNS") == "1"  # this is the session inside the namespace
INNER_TIMEOUT_S = 900  # the whole inner session: 3.6 min measured on the 2 shared cores at load ~10, over 10 at load 30
RAY = str(Path(sys.executable).with_name("ray"))
SLOW = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 100_000, "eval_every": 0, "device": "cpu"}
SAME = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 30, "eval_every": 10, "seed": 7, "device": "cpu"}


def _interfaces() -> list[str]:
    """This network namespace's interfaces (/proc/self/net is per namespace; /sys/class/net is
    the mount's, which `unshare -n` leaves as it was)."""
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return sorted(line.split(":")[0].strip() for line in lines)


def _loopback_only() -> bool:
    return _interfaces() == ["lo"]


@pytest.mark.timeout(INNER_TIMEOUT_S + 200)
def test_the_ray_tests_run_in_a_loopback_only_network_namespace(tmp_path: Path) -> None:
    if INNER:
        pytest.skip("this is the session inside the namespace")
    missing = [why for ok, why in (
        (os.geteuid() == 0, "root (to make a network namespace)"),
        (shutil.which("unshare") is not None, "unshare (util-linux)"),
        (shutil.which("ip") is not None, "ip (iproute2)"),
        (shutil.which("ss") is not None, "ss (iproute2)"),
        (importlib.util.find_spec("ray") is not None, "Ray (pip install 'gradwatch[ray]')"),
    ) if not ok]
    if missing:
        reason = "the Ray tests need " + ", ".join(missing)
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " in CI")
        pytest.skip(reason)
    started = time.monotonic()
    log = tmp_path / "inner.log"
    inner = (f"ip link set lo up && exec {sys.executable} -m pytest -q -x -p no:cacheprovider -p no:randomly "
             f"-o addopts='' --durations=0 -s {Path(__file__).relative_to(ROOT)} > {log} 2>&1")
    proc = subprocess.Popen(["unshare", "-n", "--", "sh", "-c", inner], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "GRADWATCH_RAY_NETNS": "1"})
    try:
        code = proc.wait(timeout=INNER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if code != 0:  # whatever of the cluster outlived its session (ray start daemonizes), in a namespace too
            subprocess.run(["unshare", "-n", "--", RAY, "stop", "--force"], capture_output=True, timeout=120)
    out = log.read_text(errors="replace")
    print(out[-4000:], f"\nthe namespace's session took {time.monotonic() - started:.0f} s")
    assert code == 0, f"exit {code} after {time.monotonic() - started:.0f} s:\n" + out[-8000:]
    last = out.strip().splitlines()[-1]
    inner_tests = len(re.findall(r"^def test_", Path(__file__).read_text(), flags=re.M)) - 1
    assert re.match(rf"{inner_tests} passed, 1 skipped in ", last), last  # all ran; only this wrapper skipped


def test_the_ray_settings_are_checked_at_start(tmp_path: Path) -> None:
    from gradwatch.server.security import host_allowed
    from gradwatch.server.settings import Settings, SettingsError

    def settings(**env: str) -> Settings:
        return Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path), **env})

    ray = {"GRADWATCH_LAUNCHER": "ray", "RAY_ADDRESS": "head:6379"}
    with pytest.raises(SettingsError, match="GRADWATCH_PUBLIC_URL"):
        settings(**ray)
    with pytest.raises(SettingsError, match="RAY_ADDRESS"):
        settings(GRADWATCH_LAUNCHER="ray", GRADWATCH_PUBLIC_URL="https://gw.example.com")
    for bad in ("gw.example.com", "ftp://gw.example.com", "https://gw.example.com/path", "https://u@gw.example.com"):
        with pytest.raises(SettingsError, match="GRADWATCH_PUBLIC_URL must be http"):
            settings(**ray, GRADWATCH_PUBLIC_URL=bad)
    with pytest.raises(SettingsError, match="GRADWATCH_LAUNCHER must be local or ray, got 'k8s'"):
        settings(GRADWATCH_LAUNCHER="k8s")
    s = settings(**ray, GRADWATCH_PUBLIC_URL="https://gw.example.com:8443/", GRADWATCH_RAY_CPUS_PER_RUN="2")
    assert s.worker_url == "https://gw.example.com:8443" and s.ray_cpus_per_run == 2
    assert host_allowed("gw.example.com:8443", s) and not host_allowed("other.example.com", s)


def test_an_unreachable_ray_address_fails_fast_naming_it(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there: no Ray process is started (the address is checked first)
    env = {**os.environ, "GRADWATCH_LAUNCHER": "ray", "RAY_ADDRESS": f"127.0.0.1:{port}", "GRADWATCH_TOKEN": "t" * 16,
           "GRADWATCH_PUBLIC_URL": "http://127.0.0.1:9"}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(free_port()),
                           "--data-dir", str(tmp_path / "data")], env=env, capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"RAY_ADDRESS=127.0.0.1:{port}" in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert took < 15, f"{took:.1f} s"


# ---- inside the namespace --------------------------------------------------------------------


@dataclass
class Cluster:
    address: str
    node2: subprocess.Popen
    env: dict[str, str]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    if not INNER:
        pytest.skip("runs inside the namespace of test_the_ray_tests_run_in_a_loopback_only_network_namespace")
    assert _loopback_only(), f"refusing to start Ray: interfaces {_interfaces()}, not only lo"
    port = free_port()
    temp = Path(f"/tmp/gwray-{port}")  # short: Ray's socket paths must fit 107 bytes
    # Ray's token authentication on: every Ray process, the server's driver and this session's
    # must hold the token (RAY_AUTH_TOKEN); gradwatch passes nothing of it, Ray reads its variables.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    os.environ.update(auth)  # this session's driver (ray.init below) and the server's (LiveServer's env)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    head = subprocess.run([RAY, "start", "--head", f"--port={port}", *common, '--resources={"gw_head": 1}',
                           "--include-dashboard=false", f"--temp-dir={temp}"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert head.returncode == 0, head.stdout[-3000:] + head.stderr[-3000:]
    node2 = subprocess.Popen([RAY, "start", "--block", f"--address=127.0.0.1:{port}", *common,
                              '--resources={"gw_node2": 1}'], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    import ray

    ray.init(address=address, namespace="gradwatch", logging_level="WARNING", log_to_driver=False)
    try:
        wait_for(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, timeout=180, what="the second Ray node")
        # ...and enforced: a driver with a wrong token does not get in (an error, or no answer).
        try:
            wrong = subprocess.run([sys.executable, "-c", f"import ray; ray.init(address={address!r}); print('in')"],
                                   env={**env, "RAY_AUTH_TOKEN": "0" * 32}, capture_output=True, text=True, timeout=30)
            assert wrong.returncode != 0 and "in" not in wrong.stdout.split(), wrong.stderr[-2000:]
        except subprocess.TimeoutExpired:
            pass
        yield Cluster(address, node2, env)
    finally:
        ray.shutdown()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node2.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node2.wait(60)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def server(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    port = free_port()
    s = LiveServer(tmp_path_factory.mktemp("rayserver") / "data", port=port, env={
        "GRADWATCH_LAUNCHER": "ray", "RAY_ADDRESS": cluster.address, "GRADWATCH_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "GRADWATCH_RAY_CPUS_PER_RUN": "1", "GRADWATCH_STOP_GRACE_S": "3", "RAY_USAGE_STATS_ENABLED": "0"}).start()
    yield s
    s.stop()


def steps(server: LiveServer, run_id: str) -> dict[str, list]:
    r = server.client.get(f"/api/runs/{run_id}/metrics", params={"max_points": 100_000, "stats": ""})
    assert r.status_code == 200, r.text
    return r.json()


def actor(run_id: str) -> Any:
    import ray

    return ray.get_actor(f"gradwatch-run-{run_id}", namespace="gradwatch")


def stepping(server: LiveServer, run_id: str, at_least: int = 1) -> dict[str, Any]:
    return wait_for(lambda: (lambda r: r if (r["summary"].get("step") or 0) >= at_least else None)(server.run(run_id)),
                    timeout=120, interval=0.2, what=f"run {run_id} to train")


def test_a_run_on_ray_gives_the_numbers_of_a_local_run_and_says_where_it_ran(
        server: LiveServer, cluster: Cluster, one_thread: None) -> None:
    from gradwatch.config import RunConfig
    from gradwatch.loop import train
    from gradwatch.server.store import token_digest

    run = server.create_run(SAME, name="same-seed")
    live = wait_for(lambda: (lambda r: r if r["node"] else None)(server.run(run["id"])), timeout=120,
                    what="the run's record to say its node")
    assert re.search(r"\((gw_head|gw_node2)\)", live["node"]), live["node"]  # which of the two nodes
    assert server.wait_status(run["id"], ("completed", "failed"), timeout=120)["status"] == "completed"
    got = steps(server, run["id"])
    local: list[dict[str, Any]] = []
    train(RunConfig(**SAME), local.append)
    metrics = [e for e in local if e["type"] == "metrics"]
    assert got["step"] == [e["step"] for e in metrics]
    assert got["loss"] == [e["loss"] for e in metrics]  # identical, not close
    import numpy as np

    stored = np.array(got["grad_norm"], dtype=np.float32)  # per-layer series are stored as float32
    assert stored.shape == (len(metrics), len(metrics[0]["grad_norm"]))
    assert (stored == np.array([e["grad_norm"] for e in metrics], dtype=np.float32)).all()

    # Nothing listens on another address than loopback (Ray's, the server's, the dashboard's).
    listening = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, check=True).stdout.split("\n")
    local_addrs = [line.split()[3] for line in listening if line.strip()]
    assert local_addrs, "ss saw no listening socket"
    loop = re.compile(r"^(127\.\d+\.\d+\.\d+|\[::1\]|\[::ffff:127\.\d+\.\d+\.\d+\]):\d+$")
    assert all(loop.match(a) for a in local_addrs), local_addrs

    # The run's worker token is in none of the tables Ray's listings and dashboard show (actors,
    # jobs, task events: what `ray list actors|jobs|tasks` read), read here from the cluster's GCS.
    from ray._private import state

    listed = json.dumps([state.actors(), state.jobs(), state.state._get_all_task_events()], default=str)
    assert "gradwatch-run-" + run["id"] in listed and "RunActor.train" in listed  # they do show the run
    import sqlite3

    db = sqlite3.connect(server.data_dir / "gradwatch.sqlite3")
    digests = {d for (d,) in db.execute("SELECT token FROM runs")}
    db.close()
    windows = {w[i:i + 32] for w in re.findall(r"[A-Za-z0-9_-]{32,}", listed) for i in range(len(w) - 31)}
    assert not {w for w in windows if token_digest(w) in digests}


def test_stop_and_a_killed_actor(server: LiveServer) -> None:
    a = server.create_run(SLOW, name="to-stop")
    stepping(server, a["id"])
    assert server.client.post(f"/api/runs/{a['id']}/stop").status_code == 200
    assert server.wait_status(a["id"], ("stopped", "failed"), timeout=30)["status"] == "stopped"
    wait_for(lambda: _actor_gone(a["id"]), timeout=30, what="the stopped run's actor to end")

    b = server.create_run(SLOW, name="to-kill")
    stepping(server, b["id"])
    import ray

    pid = ray.get(actor(b["id"]).where.remote())["pid"]
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    ended = server.wait_status(b["id"], ("failed", "completed", "stopped"), timeout=10)
    assert ended["status"] == "failed" and "Ray actor died" in ended["error"], ended["error"]
    print(f"killed actor -> failed in {time.monotonic() - killed:.1f} s: {ended['error'][:200]}")


def _actor_gone(run_id: str) -> bool:
    try:
        actor(run_id)
    except ValueError:
        return True
    return False


def test_more_runs_than_resources_wait_queued_saying_why_then_run(server: LiveServer) -> None:
    runs = [server.create_run(SLOW, name=f"crowd-{i}")["id"] for i in range(3)]  # 3 runs, 2 CPUs

    def two_train_one_waits() -> tuple[list[str], dict] | None:
        now = [server.run(r) for r in runs]
        training = [r["id"] for r in now if r["status"] == "running" and (r["summary"].get("step") or 0) >= 1]
        waiting = [r for r in now if r["status"] == "queued" and r.get("waiting")]
        return (training, waiting[0]) if len(training) == 2 and len(waiting) == 1 else None

    training, waiting = wait_for(two_train_one_waits, timeout=120, interval=0.2,
                                 what="two runs to train and the third to wait for the cluster")
    assert waiting["waiting"] == "waiting for 1 CPU on the Ray cluster" and waiting["node"] is None
    assert waiting["started"] is None and waiting["summary"].get("step") is None
    server.client.post(f"/api/runs/{training[0]}/stop")
    stepping(server, waiting["id"])  # the freed CPU went to it
    assert server.run(waiting["id"])["status"] == "running" and not server.run(waiting["id"]).get("waiting")
    for r in (training[1], waiting["id"]):
        server.client.post(f"/api/runs/{r}/stop")
    for r in runs:
        assert server.wait_status(r, ("stopped", "failed"), timeout=30)["status"] == "stopped"


def test_a_restarted_server_reattaches_its_live_actors(server: LiveServer) -> None:
    run = server.create_run({**SLOW, "steps": 800}, name="across-restart")
    at = stepping(server, run["id"], 5)["summary"]["step"]
    server.stop(signal.SIGKILL)  # a crash: nothing is stopped on the way out
    server.proc = None
    server.start()
    back = server.run(run["id"])
    assert back["status"] in ("running", "stalled"), back
    assert server.wait_status(run["id"], ("completed", "failed"), timeout=180)["status"] == "completed"
    got = steps(server, run["id"])["step"]
    assert got == list(range(1, 801)) and at < 800  # every step once, across the restart


def test_stopping_a_node_fails_its_runs_and_not_the_others(server: LiveServer, cluster: Cluster) -> None:
    import ray

    runs = [server.create_run(SLOW, name=f"spread-{i}")["id"] for i in range(2)]
    for r in runs:
        stepping(server, r)
    on = {r: server.run(r)["node"] for r in runs}
    assert sorted("gw_node2" in n for n in on.values()) == [False, True], on  # one on each node
    doomed = next(r for r in runs if "gw_node2" in on[r])
    other = next(r for r in runs if r != doomed)
    os.killpg(cluster.node2.pid, signal.SIGTERM)  # `ray start --block` takes its node's processes down
    stopped = time.monotonic()
    ended = server.wait_status(doomed, ("failed", "completed", "stopped"), timeout=10)
    assert ended["status"] == "failed" and "Ray actor died" in ended["error"], ended["error"]
    print(f"node stopped -> its run failed in {time.monotonic() - stopped:.1f} s: {ended['error'][:200]}")
    before = server.run(other)["summary"]["step"]
    wait_for(lambda: server.run(other)["summary"]["step"] > before + 5, timeout=30, what="the other run to go on")
    assert server.run(other)["status"] == "running"
    assert server.client.post(f"/api/runs/{other}/stop").status_code == 200
    server.wait_status(other, ("stopped",), timeout=30)
    assert sum(n["Alive"] for n in ray.nodes()) == 1
