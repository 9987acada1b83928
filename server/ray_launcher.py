"""The Ray launcher (GRADWATCH_LAUNCHER=ray): each run's worker is a named, detached Ray actor.

Why an actor, not a Ray job: an actor asks Ray for exactly the resources a run needs
(`num_gpus`, `num_cpus`) and is placed by Ray's scheduler as Ray Tune places a trial; it has a
name (`gradwatch-run-<id>` in the `gradwatch` namespace) by which a restarted server finds it
again; it dies with a reason Ray states (its process killed, its node gone), which becomes the
run's; and what it is given goes as an argument of a method call, never into a job's entrypoint
or runtime environment, which Ray lists (`ray job list`, the dashboard). So the run's ingest
token is an argument of `train()`, not an environment variable. A job would be a `python -m
gradwatch.worker` command line with its token in the job's environment, listed for anyone who
can read the dashboard.

The actor runs `gradwatch.worker.main` in its own process (one actor, one process, one run),
which connects to GRADWATCH_PUBLIC_URL over the ingest websocket like any worker. The server
watches it through `join()`, a second method the threaded actor answers while `train()` runs:
it returns the worker's exit status, or raises Ray's error when the actor or its node dies.
After a server restart `reattach` finds a live actor by its name and watches it again.

A run that waits for resources is `queued`, its record saying what for ("waiting for 1 GPU
and 1 CPU on the Ray cluster"), until Ray places its actor. Nothing in this module runs
unless the Ray launcher is chosen: `ray` is imported at start, from the `gradwatch[ray]` extra.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

from .launcher import LaunchSpec, RunHandle

log = logging.getLogger("gradwatch.ray")

NAMESPACE = "gradwatch"
CONNECT_TIMEOUT_S = 5.0  # RAY_ADDRESS must answer within this, or the server does not start
JOIN_POLL_S = 0.5


class RayUnavailable(RuntimeError):
    pass


def actor_name(run_id: str) -> str:
    return f"gradwatch-run-{run_id}"


class RunActor:
    """One run's worker, in its own Ray worker process. Threaded (max_concurrency=4): `train`
    runs the worker; `where` and `join` answer meanwhile."""

    def __init__(self) -> None:
        import threading

        self.done = threading.Event()
        self.code: int | None = None

    def where(self) -> dict[str, Any]:
        import ray

        ctx = ray.get_runtime_context()
        gpus = [str(g) for g in ray.get_gpu_ids()]
        return {"node_id": ctx.get_node_id(), "gpu": ",".join(gpus) or None, "pid": os.getpid()}

    def train(self, argv: list[str], token: str, env: dict[str, str]) -> int:
        os.environ.update(env)
        os.environ["GRADWATCH_RUN_TOKEN"] = token  # this process's own: one actor, one run
        from gradwatch import worker

        try:
            self.code = worker.main(argv)
        except SystemExit as e:
            self.code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - said in the actor's log; the server sees the code
            import traceback

            traceback.print_exc()
            self.code = 1
        finally:
            sys.stdout.flush()
            self.done.set()
        return self.code

    def join(self, timeout: float) -> int | None:
        """The worker's exit status once it has ended, else None after `timeout` seconds."""
        return self.code if self.done.wait(timeout) else None


@dataclass
class RayHandle(RunHandle):
    actor: Any = None
    placed: bool = False


def _host_port(address: str) -> tuple[str, int]:
    addr = address.removeprefix("ray://")
    host, _, port = addr.rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"RAY_ADDRESS={address!r} is not host:port (e.g. ray-head:6379)")
    return host.strip("[]"), int(port)


class RayLauncher:
    name = "ray"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.address = settings.ray_address
        self.ray: Any = None
        self.remote: Any = None
        self.has_gpus = False
        self.node_names: dict[str, str] = {}
        self.max_concurrent = settings.ray_max_runs

    # ---- start -----------------------------------------------------------------------

    async def start(self) -> None:
        """Reach the cluster, or raise RayUnavailable naming RAY_ADDRESS, within seconds."""
        await asyncio.to_thread(check_address, self.address)
        host, port = _host_port(self.address)
        try:
            import ray
        except ImportError as e:
            raise RayUnavailable("GRADWATCH_LAUNCHER=ray needs Ray: pip install 'gradwatch[ray]'") from e
        self.ray = ray
        try:
            await asyncio.to_thread(ray.init, address=f"{host}:{port}", namespace=NAMESPACE,
                                    logging_level=logging.WARNING, log_to_driver=False,
                                    configure_logging=False)
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds; each is "not reachable"
            raise RayUnavailable(f"cannot join the Ray cluster at RAY_ADDRESS={self.address}: {e}") from e
        self.remote = ray.remote(max_concurrency=4, max_restarts=0)(RunActor)
        await self.refresh_nodes()

    async def refresh_nodes(self) -> None:
        nodes = await asyncio.to_thread(self.ray.nodes)
        self.has_gpus = any(n.get("Resources", {}).get("GPU", 0) > 0 for n in nodes if n.get("Alive"))
        for n in nodes:
            custom = sorted(k for k in n.get("Resources", {}) if k not in _BUILTIN and not k.startswith("node:")
                            and not k.startswith("accelerator_type:"))
            ip = n.get("NodeManagerAddress", "?")
            self.node_names[n["NodeID"]] = f"{ip} {n['NodeID'][:8]}" + (f" ({', '.join(custom)})" if custom else "")

    # ---- what a run needs ------------------------------------------------------------

    def gpus(self, config: dict[str, Any]) -> int:
        asked = int(config.get("gpus", -1))
        return (1 if self.has_gpus else 0) if asked < 0 else asked

    def needs(self, config: dict[str, Any]) -> str:
        gpus, cpus = self.gpus(config), self.settings.ray_cpus_per_run
        what = [f"{gpus} GPU" + ("s" if gpus > 1 else "")] if gpus else []
        what.append(f"{cpus:g} CPU" + ("s" if cpus != 1 else ""))
        return f"waiting for {' and '.join(what)} on the Ray cluster"

    # ---- launch, watch, stop ---------------------------------------------------------

    async def launch(self, spec: LaunchSpec) -> RayHandle:
        existing = await self._get(spec.run_id)
        if existing is not None:  # launched by an earlier server that died before it was recorded
            return existing
        threads = max(1, int(self.settings.ray_cpus_per_run))
        argv = ["--server", self.settings.worker_url, "--run", spec.run_id,
                "--data-dir", str(self.settings.data_dir / "datasets")]
        env = {"GRADWATCH_TORCH_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
        if self.settings.gpu_memory_fraction:
            env["GRADWATCH_GPU_MEMORY_FRACTION"] = str(self.settings.gpu_memory_fraction)

        def create() -> Any:
            actor = self.remote.options(
                name=actor_name(spec.run_id), namespace=NAMESPACE, lifetime="detached",
                num_cpus=self.settings.ray_cpus_per_run, num_gpus=self.gpus(spec.config)).remote()
            actor.train.remote(argv, spec.token, env)  # the token: an argument, never listed by Ray
            return actor

        try:
            actor = await asyncio.to_thread(create)
        except Exception as e:  # noqa: BLE001 - Ray's own errors: the run fails with them
            raise OSError(f"Ray refused the actor: {e}") from e
        return RayHandle(spec.run_id, {"node": None, "gpu": None}, actor)

    async def placed(self, handle: RunHandle, timeout: float) -> bool:
        """True once Ray has placed the run's actor (its record then says node and GPU)."""
        assert isinstance(handle, RayHandle)
        if handle.placed:
            return True
        ref = handle.actor.where.remote()
        ready, _ = await asyncio.to_thread(self.ray.wait, [ref], timeout=timeout)
        if not ready:  # still pending: the call answers once the actor is placed
            return False
        try:
            where = await asyncio.to_thread(self.ray.get, ref)
        except Exception:  # noqa: BLE001 - it died before answering: wait() says why
            return True
        if where["node_id"] not in self.node_names:
            await self.refresh_nodes()
        handle.where = {"node": self.node_names.get(where["node_id"], where["node_id"][:8]), "gpu": where["gpu"]}
        handle.placed = True
        return True

    async def waiting(self, handle: RunHandle, config: dict[str, Any]) -> str | None:
        """What the run waits for, when the cluster has not its CPUs and GPUs free (an actor whose
        process is only slow to start has taken them already, but then it is placed soon after:
        this is asked only of actors unplaced for PLACEMENT_NOTE_S)."""
        free = await asyncio.to_thread(self.ray.available_resources)
        if free.get("CPU", 0) >= self.settings.ray_cpus_per_run and free.get("GPU", 0) >= self.gpus(config):
            return None
        return self.needs(config)

    async def _get(self, run_id: str) -> RayHandle | None:
        try:
            actor = await asyncio.to_thread(self.ray.get_actor, actor_name(run_id), namespace=NAMESPACE)
        except ValueError:  # no live actor of that name
            return None
        return RayHandle(run_id, {"node": None, "gpu": None}, actor)

    async def reattach(self, run_id: str) -> RayHandle | None:
        handle = await self._get(run_id)
        if handle is None:
            raise LookupError(f"its Ray actor {actor_name(run_id)} is gone (it ended or died while the server "
                              "was down)")
        await self.placed(handle, 2.0)
        return handle

    async def stop(self, handle: RunHandle) -> None:
        self.kill(handle)

    def kill(self, handle: RunHandle) -> None:
        assert isinstance(handle, RayHandle)
        try:
            self.ray.kill(handle.actor, no_restart=True)
        except Exception as e:  # noqa: BLE001 - already gone
            log.info("run %s: killing its actor: %s", handle.run_id, e)

    async def wait(self, handle: RunHandle) -> Any:
        """The worker's exit code, or Ray's error when the actor or its node died."""
        assert isinstance(handle, RayHandle)
        while True:
            ref = handle.actor.join.remote(JOIN_POLL_S * 4)
            try:
                code = await asyncio.wrap_future(ref.future())
            except Exception as e:  # noqa: BLE001 - RayActorError, ActorDiedError, ...: the reason
                return e
            if code is not None:  # the worker is done: its actor ends too, giving back its resources
                self.kill(handle)
                return code

    def failure_reason(self, handle: RunHandle, ended: Any) -> str:
        if isinstance(ended, BaseException):
            text = " ".join(str(ended).split())
            return f"its Ray actor died: {type(ended).__name__}: {text[:600]}"
        return f"worker exited with code {ended} before finishing (its Ray actor's log has the details)"

    def forget(self, run_id: str) -> None:
        pass

    async def close(self) -> None:
        """The actors live on (detached): a restarted server re-attaches them."""
        if self.ray is not None:
            await asyncio.to_thread(self.ray.shutdown)


_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def check_address(address: str | None) -> None:
    """RAY_ADDRESS answers (a TCP connect within CONNECT_TIMEOUT_S), else RayUnavailable naming it:
    `gradwatch serve` checks this before it starts, so a wrong address is one line, not a hang."""
    if not address:
        raise RayUnavailable("GRADWATCH_LAUNCHER=ray needs RAY_ADDRESS: the Ray head's host:port")
    host, port = _host_port(address)
    try:
        _tcp_check(host, port)
    except OSError as e:
        raise RayUnavailable(f"cannot reach the Ray cluster at RAY_ADDRESS={address} ({e.strerror or e}): is its "
                             "head running, and is that its GCS port (6379 by default)?") from e


def _tcp_check(host: str, port: int) -> None:
    with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
        pass
