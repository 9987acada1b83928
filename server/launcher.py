"""Launchers: how a run's worker is started, stopped, killed, waited on and explained.

The job manager sees only the `Launcher` interface below and opaque handles: no PIDs, no GPU
indices, no log files. `LocalLauncher` runs each worker as a process on the server's machine: a
fresh interpreter per run, or forked from the zygote (trainer/zygote.py), which has torch
imported already and so starts a run in milliseconds instead of seconds. It picks each worker's
GPU (the least busy, when there are several), sets its torch thread count and explains a
failure from the tail of the worker's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

log = logging.getLogger("gradwatch.launcher")

ROOT = Path(__file__).resolve().parent.parent


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("GRADWATCH_TOKEN", None)  # a worker needs its own run's token only
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass
class LaunchSpec:
    """What a launcher needs to start one run's worker."""

    run_id: str
    token: str  # the worker's own ingest token (GRADWATCH_RUN_TOKEN); never on a command line
    config: dict[str, Any]  # the run's RunConfig fields (a launcher reads what it places by, e.g. gpus)


@dataclass
class RunHandle:
    """One launched worker, as the job manager sees it: where it runs, nothing to signal."""

    run_id: str
    where: dict[str, Any] = field(default_factory=dict)  # {"node": ..., "gpu": ...}: shown in the run's record


class Launcher(Protocol):
    name: str
    max_concurrent: int  # runs launched at once; more wait queued (the local launcher: its worker slots)

    async def start(self) -> None:
        """Ready to launch (a pre-forking process warmed, a cluster reached); raises with a clear
        message when it cannot be."""

    def needs(self, config: dict[str, Any]) -> str:
        """What a run with this config waits for, in words ("a worker slot", "1 GPU on the Ray
        cluster"): the reason a queued run shows."""

    async def launch(self, spec: LaunchSpec) -> RunHandle:
        """Start the worker. Raises OSError or TimeoutError when it cannot; the run waits again."""

    async def placed(self, handle: RunHandle, timeout: float) -> bool:
        """Whether the worker has its resources (within `timeout` s); until then the run is
        `queued`, saying what it waits for. A handle's `where` is known once it is placed."""

    async def waiting(self, handle: RunHandle, config: dict[str, Any]) -> str | None:
        """A worker not placed yet: what it waits for (`needs`), when it is for resources the
        cluster does not have free; None when it is only starting."""

    async def reattach(self, run_id: str) -> RunHandle | None:
        """After a server restart: the run's worker if this launcher can still reach it; None
        when it cannot tell; LookupError (with the reason) when it knows the worker is gone."""

    async def stop(self, handle: RunHandle) -> None:
        """Ask the worker to end by the launcher's own means (the control channel comes first)."""

    def kill(self, handle: RunHandle) -> None:
        """End the worker now."""

    async def wait(self, handle: RunHandle) -> Any:
        """Until the worker has ended; returns what `failure_reason` explains."""

    def failure_reason(self, handle: RunHandle, ended: Any) -> str:
        """Why a worker that ended without finishing its run did, in words."""

    def forget(self, run_id: str) -> None:
        """The run is deleted: drop what the launcher keeps of it (its log)."""

    async def close(self) -> None:
        """The server shuts down."""


def nvidia_gpus(proc: str = "/proc/driver/nvidia/gpus", dev: str = "/dev") -> list[str]:
    """Indices of the NVIDIA GPUs this process can use (none without the driver), without
    importing torch. The driver lists each GPU in `proc`; in a container the NVIDIA runtime may
    hide that folder, but gives a device node /dev/nvidia<N> for each GPU it lets in."""
    for folder, name in ((proc, None), (dev, re.compile(r"nvidia\d+"))):
        try:
            n = sum(1 for f in os.listdir(folder) if name is None or name.fullmatch(f))
        except OSError:
            n = 0
        if n:
            return [str(i) for i in range(n)]
    return []


class Handle:
    """A local worker process (the local launcher's own; the job manager never sees a pid)."""

    def __init__(self, pid: int, exited: asyncio.Future[int | None]) -> None:
        self.pid = pid
        self._exited = exited

    async def wait(self) -> int | None:
        """The exit code (negative: killed by that signal); None when it could not be known."""
        return await asyncio.shield(self._exited)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


class SubprocessLauncher:
    """Starts a fresh `python -m gradwatch.worker` per run (for LocalLauncher)."""

    async def launch(self, argv: list[str], env: dict[str, str], log_path: Path) -> Handle:
        with open(log_path, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gradwatch.worker", *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, env=worker_env(env), start_new_session=True)
        return Handle(proc.pid, asyncio.ensure_future(proc.wait()))

    async def close(self) -> None:
        pass


class ZygoteLauncher:
    """Forks workers from one pre-imported process; restarts it if it dies (for LocalLauncher)."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self._started: dict[str, asyncio.Future[int]] = {}
        self._exits: dict[int, asyncio.Future[int | None]] = {}
        self._ready: asyncio.Future[None] | None = None
        self._reader: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._start_lock = asyncio.Lock()
        self._closing = False

    async def ensure(self) -> None:
        async with self._start_lock:  # the warm-up and the first launch may both get here: one zygote
            if self.proc is None or self.proc.returncode is not None:
                with open(self.log_path, "ab") as logf:
                    self.proc = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "gradwatch.zygote", stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE, stderr=logf, env=worker_env(), start_new_session=True)
                self._ready = asyncio.get_running_loop().create_future()
                self._reader = asyncio.create_task(self._read(self.proc))
        await asyncio.wait_for(asyncio.shield(self._ready), 120)

    async def launch(self, argv: list[str], env: dict[str, str], log_path: Path) -> Handle:
        run_id = argv[argv.index("--run") + 1]
        async with self._lock:
            await self.ensure()
            started = asyncio.get_running_loop().create_future()
            self._started[run_id] = started
            request = {"run_id": run_id, "argv": argv, "env": env, "log": str(log_path)}
            self.proc.stdin.write(orjson.dumps(request) + b"\n")
            await self.proc.stdin.drain()
        try:
            pid = await asyncio.wait_for(started, 30)
        finally:
            self._started.pop(run_id, None)
        return Handle(pid, self._exits[pid])

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        while line := await proc.stdout.readline():
            msg = orjson.loads(line)
            event = msg.get("event")
            if event == "ready":
                self._ready.set_result(None)
            elif event == "started":
                self._exits.setdefault(msg["pid"], loop.create_future())
                fut = self._started.get(msg["run_id"])
                if fut is not None and not fut.done():
                    fut.set_result(msg["pid"])
            elif event == "exited":
                fut = self._exits.setdefault(msg["pid"], loop.create_future())
                if not fut.done():
                    fut.set_result(msg["code"])
                self._exits.pop(msg["pid"], None)
            elif event == "error":
                fut = self._started.get(msg.get("run_id"))
                if fut is not None and not fut.done():
                    fut.set_exception(OSError(msg.get("message", "zygote error")))
        # The zygote is gone. Its workers live on (re-parented); watch their pids instead.
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(OSError("the worker launcher exited at start; see logs/zygote.log"))
        for fut in self._started.values():
            if not fut.done():
                fut.set_exception(OSError("the worker launcher exited"))
        for pid, fut in list(self._exits.items()):
            asyncio.create_task(_watch_pid(pid, fut))
        self._exits = {}
        if not self._closing:  # start another now, so the next run does not pay for its imports
            asyncio.create_task(self._restart(proc))

    async def _restart(self, dead: asyncio.subprocess.Process) -> None:
        await dead.wait()  # reaped: ensure() sees it gone
        log.warning("the pre-forking launcher exited (code %s); starting another", dead.returncode)
        try:
            await self.ensure()
        except (OSError, TimeoutError) as e:  # the next launch tries again
            log.warning("the pre-forking launcher did not restart: %s", e)

    async def close(self) -> None:
        self._closing = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
        if self._reader is not None:
            self._reader.cancel()


@dataclass
class LocalHandle(RunHandle):
    proc: Handle | None = None


class LocalLauncher:
    """Each run's worker a process on this machine, `max_concurrent` at once (the job manager's
    slots): forked from the zygote when `prefork` (a fresh interpreter when that fails)."""

    name = "local"

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.log_dir = settings.data_dir / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Several GPUs: each worker gets one (CUDA_VISIBLE_DEVICES), the least busy.
        self.gpus = settings.gpus if settings.gpus is not None else nvidia_gpus()
        self.gpu_of: dict[str, str] = {}  # run id -> its worker's GPU
        # Workers training at once share the cores: more torch threads than cores only thrash, and
        # one core's share is left to the server's event loop (workers also run niced: worker.py).
        self.threads = settings.worker_threads or max(1, ((os.cpu_count() or 1) - 1) // settings.max_concurrent)
        self.starter: SubprocessLauncher | ZygoteLauncher = (
            ZygoteLauncher(self.log_dir / "zygote.log") if settings.prefork else SubprocessLauncher())
        self._warm: asyncio.Task | None = None
        self.max_concurrent = settings.max_concurrent

    async def start(self) -> None:
        if isinstance(self.starter, ZygoteLauncher):  # now, so the first run does not pay for its imports
            self._warm = asyncio.create_task(self._warm_up())

    async def _warm_up(self) -> None:
        try:
            await self.starter.ensure()
        except (OSError, TimeoutError) as e:
            log.warning("pre-forking launcher unavailable (%s); starting each worker fresh", e)
            self.starter = SubprocessLauncher()

    def needs(self, config: dict[str, Any]) -> str:
        return f"a free worker slot (GRADWATCH_MAX_CONCURRENT={self.settings.max_concurrent})"

    async def launch(self, spec: LaunchSpec) -> LocalHandle:
        argv = ["--server", self.settings.self_url, "--run", spec.run_id,
                "--data-dir", str(self.settings.data_dir / "datasets")]
        env = {"GRADWATCH_RUN_TOKEN": spec.token, "GRADWATCH_TORCH_THREADS": str(self.threads)}
        gpu = self._pick_gpu()
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        if self.settings.gpu_memory_fraction:
            env["GRADWATCH_GPU_MEMORY_FRACTION"] = str(self.settings.gpu_memory_fraction)
        log_path = self.log_dir / f"{spec.run_id}.log"
        try:
            proc = await self.starter.launch(argv, env, log_path)
        except (OSError, TimeoutError) as e:
            if not isinstance(self.starter, ZygoteLauncher):
                raise
            # This run starts in a fresh interpreter; the zygote restarts for the next.
            log.warning("pre-forking launcher failed (%s); starting run %s fresh", e, spec.run_id)
            proc = await SubprocessLauncher().launch(argv, env, log_path)
        if gpu is not None:
            self.gpu_of[spec.run_id] = gpu
        return LocalHandle(spec.run_id, {"node": "local", "gpu": gpu}, proc)

    def _pick_gpu(self) -> str | None:
        """The GPU with the fewest of our workers (the first of those), when there are several."""
        if len(self.gpus) < 2:
            return None
        busy = {g: 0 for g in self.gpus}
        for g in self.gpu_of.values():
            if g in busy:
                busy[g] += 1
        return min(self.gpus, key=lambda g: busy[g])

    async def placed(self, handle: RunHandle, timeout: float) -> bool:
        return True  # a process has what it needs as soon as it exists

    async def waiting(self, handle: RunHandle, config: dict[str, Any]) -> str | None:
        return None

    async def reattach(self, run_id: str) -> None:
        return None  # a worker of an earlier server is no child of ours: it is adopted if it reconnects

    async def stop(self, handle: RunHandle) -> None:
        assert isinstance(handle, LocalHandle) and handle.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(handle.proc.pid, signal.SIGTERM)

    def kill(self, handle: RunHandle) -> None:
        assert isinstance(handle, LocalHandle) and handle.proc is not None
        handle.proc.kill()

    async def wait(self, handle: RunHandle) -> int | None:
        """The exit code (negative: killed by that signal); None when it could not be known."""
        assert isinstance(handle, LocalHandle) and handle.proc is not None
        try:
            return await handle.proc.wait()
        finally:
            self.gpu_of.pop(handle.run_id, None)

    def failure_reason(self, handle: RunHandle, code: int | None) -> str:
        if code is None:
            how = "ended (exit code unknown)"
        elif code < 0:
            how = f"killed by signal {signal.Signals(-code).name}"
        else:
            how = f"exited with code {code}"
        tail = self.log_tail(handle.run_id)
        return f"worker {how} before finishing" + (f": {tail}" if tail else "")

    def log_tail(self, run_id: str, lines: int = 8) -> str:
        try:
            text = (self.log_dir / f"{run_id}.log").read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def forget(self, run_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.log_dir / f"{run_id}.log").unlink()

    async def close(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
        await self.starter.close()


def make_launcher(settings: Any) -> Launcher:
    """The launcher GRADWATCH_LAUNCHER names."""
    if settings.launcher == "ray":
        from .ray_launcher import RayLauncher

        return RayLauncher(settings)
    return LocalLauncher(settings)


async def _watch_pid(pid: int, fut: asyncio.Future[Any]) -> None:
    """A worker whose parent (the zygote) is gone: its end, whoever its parent is now. Re-parented
    to init it is reaped there; re-parented to us (the server as PID 1 in a container, or a
    subreaper) it stays a zombie, which `kill(pid, 0)` still finds: so wait on a pidfd, which is
    readable once the process has ended, zombie or not, and reap it if it is ours."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    except (OSError, AttributeError):  # no pidfd (old kernel): poll, counting a zombie as ended
        fd = None
        while _alive(pid):
            await asyncio.sleep(0.2)
    if fd is not None:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(fd, lambda: ended.done() or ended.set_result(None))
        try:
            await ended
        finally:
            loop.remove_reader(fd)
            os.close(fd)
    if not fut.done():
        fut.set_result(_reap(pid))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False
        except OSError:
            return True


def _reap(pid: int) -> int | None:
    """Its exit code (negative: the signal) when it is our child, reaping it; else None."""
    try:
        got, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if got != pid:
        return None
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
