"""How worker processes are started: a fresh interpreter per run, or forked from the zygote
(trainer/zygote.py), which has torch imported already and so starts a run in milliseconds
instead of seconds. Both give a Handle with `pid`, `wait()` and `kill()`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("gradwatch.launcher")

ROOT = Path(__file__).resolve().parent.parent


def worker_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    env.pop("GRADWATCH_TOKEN", None)  # a worker needs its own run's token only
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class Handle:
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
    """A fresh `python -m gradwatch.worker` per run."""

    async def launch(self, argv: list[str], env: dict[str, str], log_path: Path) -> Handle:
        with open(log_path, "ab") as logf:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gradwatch.worker", *argv, stdin=asyncio.subprocess.DEVNULL,
                stdout=logf, stderr=logf, env=worker_env(env), start_new_session=True)
        return Handle(proc.pid, asyncio.ensure_future(proc.wait()))

    async def close(self) -> None:
        pass


class ZygoteLauncher:
    """Forks workers from one pre-imported process; restarts it if it dies."""

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
