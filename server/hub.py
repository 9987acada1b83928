"""Fan-out of live events to browsers: one bounded queue per subscriber.

Nobody waits for the slowest reader: `publish` never blocks. A subscriber whose queue is full
loses its queued messages and gets one `resync` message instead; it then fetches the gap from
the store by `seq` (the store is the source of truth, this is only its live cache).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


RUN_RECORD_TYPES = ("run.update", "run.deleted")


class Subscriber:
    def __init__(self, runs: set[str] | None, maxsize: int) -> None:
        self.runs = runs  # None = every run
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize)
        self.resyncs = 0  # times this subscriber fell behind

    def wants(self, run_id: str) -> bool:
        return self.runs is None or run_id in self.runs


class Hub:
    def __init__(self, queue_size: int = 2048) -> None:
        self.queue_size = queue_size
        self.subscribers: set[Subscriber] = set()
        self.delivered = 0

    def subscribe(self, runs: set[str] | None = None) -> Subscriber:
        sub = Subscriber(runs, self.queue_size)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, run_id: str, message: dict[str, Any]) -> None:
        """Send one message (must hold `type`, `run_id`, `seq`) to everyone who wants it."""
        if not self.subscribers:
            return
        data = orjson.dumps(message)  # serialised once for every subscriber
        # Run records go to everyone (a filtered page still keeps its runs list live);
        # events only to those who asked for that run.
        everyone = message.get("type") in RUN_RECORD_TYPES
        for sub in self.subscribers:
            if everyone or sub.wants(run_id):
                self._offer(sub, data)

    def _offer(self, sub: Subscriber, data: bytes) -> None:
        try:
            sub.queue.put_nowait(data)
            self.delivered += 1
        except asyncio.QueueFull:
            # Behind: drop what it has queued, tell it to refetch from the store.
            while not sub.queue.empty():
                sub.queue.get_nowait()
            sub.resyncs += 1
            sub.queue.put_nowait(orjson.dumps({"type": "resync", "run_id": None, "seq": None}))
