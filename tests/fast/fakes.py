"""Fakes at the seams the server already has: a launcher (server/launcher.py's protocol) whose
workers are futures, so that the job manager, and the whole app, run with no process started."""

from __future__ import annotations

import asyncio
from typing import Any

from gradwatch.server.launcher import LaunchSpec, RunHandle


class FakeLauncher:
    """Workers that are futures: a test ends one with `exit(run_id, code)`. `store`, when given
    (or set later), lets it record each run's status at the moment of its launch."""

    name = "fake"

    def __init__(self, store: Any = None, fail: set[str] = frozenset(), alive: set[str] = frozenset(),
                 max_concurrent: int = 2) -> None:
        self.store = store
        self.max_concurrent = max_concurrent
        self.unplaced: set[str] = set()  # runs whose resources are not free yet
        self.fail = set(fail)  # run ids (or "*": every run) whose launch raises OSError
        self.alive = alive
        self.launched: list[str] = []
        self.specs: dict[str, LaunchSpec] = {}  # what each launched worker was given (its token)
        self.status_at_launch: dict[str, str] = {}
        self.killed: list[str] = []
        self.ends: dict[str, asyncio.Future] = {}

    async def start(self) -> None:
        pass

    def needs(self, config: dict[str, Any]) -> str:
        return "a fake slot"

    async def launch(self, spec: LaunchSpec) -> RunHandle:
        if self.store is not None:
            self.status_at_launch[spec.run_id] = self.store.get_run(spec.run_id)["status"]
        if spec.run_id in self.fail or "*" in self.fail:
            raise OSError("no such machine")
        self.launched.append(spec.run_id)
        self.specs[spec.run_id] = spec
        self.ends[spec.run_id] = asyncio.get_running_loop().create_future()
        return RunHandle(spec.run_id, {"node": "fake-node", "gpu": "7"})

    async def placed(self, handle: RunHandle, timeout: float) -> bool:
        if handle.run_id in self.unplaced:
            await asyncio.sleep(min(timeout, 0.01))
            return False
        return True

    async def waiting(self, handle: RunHandle, config: dict[str, Any]) -> str | None:
        return self.needs(config) if handle.run_id in self.unplaced else None

    async def reattach(self, run_id: str) -> RunHandle | None:
        if run_id not in self.alive:
            return None
        self.ends[run_id] = asyncio.get_running_loop().create_future()
        return RunHandle(run_id, {"node": "fake-node", "gpu": None})

    async def stop(self, handle: RunHandle) -> None:
        self.kill(handle)

    def kill(self, handle: RunHandle) -> None:
        self.killed.append(handle.run_id)
        self.exit(handle.run_id, -9)

    def exit(self, run_id: str, code: int) -> None:
        """The run's worker ends with `code` (call it on the event loop's thread)."""
        if not self.ends[run_id].done():
            self.ends[run_id].set_result(code)

    async def wait(self, handle: RunHandle) -> int:
        return await self.ends[handle.run_id]

    def failure_reason(self, handle: RunHandle, code: int) -> str:
        return f"fake worker ended with {code}"

    def forget(self, run_id: str) -> None:
        pass

    async def close(self) -> None:
        pass
