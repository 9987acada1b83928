"""Local launcher vs Ray launcher (issue 12): time from POST /api/runs to the run's first stored
step, for the local launcher (pre-forked workers) and for the Ray launcher on a local two-node
cluster; then a 16-run group on that cluster: every run completes, every step of each stored.

    sudo .venv/bin/python bench/ray_launch.py [--trials 5]

It runs itself inside a network namespace that has only `lo` (`unshare -n`, root), so that
no Ray process can reach any address but loopback; it refuses to start Ray anywhere else.
Results go to stdout; docs/benchmarks.md quotes them with the machine they ran on.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
CONFIG = {"dataset": "synthetic", "depth": 2, "width": 16, "steps": 200, "eval_every": 0, "device": "cpu"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(pred, timeout: float, what: str, interval: float = 0.01):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        time.sleep(interval)
    raise TimeoutError(what)


class Server:
    def __init__(self, data: Path, env: dict[str, str], port: int) -> None:
        self.port, self.token = port, secrets.token_urlsafe(16)
        data.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(data.parent / f"server-{port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port), "--data-dir", str(data)],
            env={**os.environ, **env, "GRADWATCH_TOKEN": self.token}, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                                   headers={"Authorization": f"Bearer {self.token}"})
        wait(self.healthy, 120, "the server", 0.1)

    def healthy(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"server exited {self.proc.returncode}")
        try:
            return self.client.get("/api/health").status_code == 200
        except httpx.TransportError:
            return False

    def first_step_s(self) -> float:
        t0 = time.monotonic()
        run = self.client.post("/api/runs", json={"config": CONFIG}).json()
        wait(lambda: (self.client.get(f"/api/runs/{run['id']}").json()["summary"].get("step") or 0) >= 1,
             120, "the first step")
        took = time.monotonic() - t0
        wait(lambda: self.client.get(f"/api/runs/{run['id']}").json()["status"] in ("completed", "failed"),
             120, "the run to end", 0.1)
        return took

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.client.close()


def inner(trials: int) -> None:
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    assert [line.split(":")[0].strip() for line in lines] == ["lo"], "refusing to start Ray outside a lo-only netns"
    tmp = Path(tempfile.mkdtemp(prefix="gwbench-"))
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    print(f"machine: {os.cpu_count()} CPUs; Python {sys.version.split()[0]}", flush=True)

    local = Server(tmp / "local" / "data", {"GRADWATCH_MAX_CONCURRENT": "1"}, free_port())
    local.first_step_s()  # the zygote warmed
    lt = [local.first_step_s() for _ in range(trials)]
    local.stop()
    print(f"local (pre-forked): POST -> first step median {statistics.median(lt):.2f} s  {[round(x, 2) for x in lt]}",
          flush=True)

    port = free_port()
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=0", "--disable-usage-stats"]
    t = time.monotonic()
    subprocess.run([RAY, "start", "--head", f"--port={port}", *common, '--resources={"gw_head": 1}',
                    "--include-dashboard=false", f"--temp-dir=/tmp/gwb-{port}"], env=env, check=True,
                   capture_output=True)
    node2 = subprocess.Popen([RAY, "start", "--block", f"--address=127.0.0.1:{port}", *common,
                              '--resources={"gw_node2": 1}'], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sp = free_port()
        ray = Server(tmp / "ray" / "data", {"GRADWATCH_LAUNCHER": "ray", "RAY_ADDRESS": f"127.0.0.1:{port}",
                                            "GRADWATCH_PUBLIC_URL": f"http://127.0.0.1:{sp}"}, sp)
        wait(lambda: ray.client.get("/api/health").status_code == 200, 60, "ray server")
        print(f"cluster and server up in {time.monotonic() - t:.0f} s", flush=True)
        ray.first_step_s()
        rt = [ray.first_step_s() for _ in range(trials)]
        print(f"ray (new actor per run): POST -> first step median {statistics.median(rt):.2f} s  "
              f"{[round(x, 2) for x in rt]}; ratio to local {statistics.median(rt) / statistics.median(lt):.1f}x",
              flush=True)

        t = time.monotonic()
        group = ray.client.post("/api/groups", json={"name": "sixteen", "base": CONFIG,
                                                     "seeds": list(range(16))}).json()
        ids = [r["id"] for r in group["runs"]]
        nodes: dict[str, str] = {}

        def ended() -> bool:
            for i in ids:
                r = ray.client.get(f"/api/runs/{i}").json()
                if r.get("node"):
                    nodes[i] = r["node"]
            runs = [ray.client.get(f"/api/runs/{i}").json() for i in ids]
            return all(r["status"] in ("completed", "failed", "stopped") for r in runs)

        wait(ended, 1800, "the group", 0.5)
        runs = [ray.client.get(f"/api/runs/{i}").json() for i in ids]
        complete = sum(r["status"] == "completed" for r in runs)
        steps = [len(ray.client.get(f"/api/runs/{i}/metrics", params={"max_points": 100_000, "stats": ""})
                     .json()["step"]) for i in ids]
        on2 = sum("gw_node2" in n for n in nodes.values())
        print(f"16-run group ({CONFIG['steps']} steps each) on 2 nodes x 2 CPUs: {complete}/16 completed in "
              f"{time.monotonic() - t:.0f} s; steps stored per run: min {min(steps)}, max {max(steps)}; "
              f"placed on gw_head {len(nodes) - on2}, gw_node2 {on2} (of {len(nodes)} seen placed)", flush=True)
        ray.stop()
    finally:
        os.killpg(node2.pid, signal.SIGTERM)
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        inner(args.trials)
        return
    if os.geteuid() != 0 or not shutil.which("unshare"):
        sys.exit("needs root and unshare: it runs the Ray cluster in a network namespace with only lo")
    cmd = f"ip link set lo up && exec {sys.executable} {Path(__file__).resolve()} --inner --trials {args.trials}"
    sys.exit(subprocess.run(["unshare", "-n", "--", "sh", "-c", cmd], cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
