"""Fan-out of live events to browsers: one bounded queue per subscriber.

Nobody waits for the slowest reader: `publish` never blocks. A subscriber whose queue is full
(QUEUE_SIZE messages or QUEUE_BYTES bytes, whichever comes first, so a stuck browser costs the
server a bounded amount of memory whatever the message size) loses its queued messages and
gets one `resync` message instead; it then fetches the gap from the store by `seq` (the store
is the source of truth, this is only its live cache).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

RUN_RECORD_TYPES = ("run.update", "run.deleted")
QUEUE_SIZE = 2048  # messages waiting for one subscriber, at most
QUEUE_BYTES = 4 * 1024 * 1024  # ...and bytes


class Subscriber:
    def __init__(self, runs: set[str] | None, maxsize: int, max_bytes: int = QUEUE_BYTES) -> None:
        self.runs = runs  # None = every run
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize)  # JSON text, ready for send_text
        self.max_bytes = max_bytes
        self.queued_bytes = 0
        self.resyncs = 0  # times this subscriber fell behind

    async def get(self) -> str:
        """The next message for this subscriber (its sender calls this, nobody else)."""
        data = await self.queue.get()
        self.queued_bytes -= len(data)
        return data

    def wants(self, run_id: str) -> bool:
        return self.runs is None or run_id in self.runs


class Hub:
    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
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
        # Serialised once for every subscriber, and decoded once: a str of exactly its size.
        # (orjson's bytes keep the buffer it sized for the worst case, 4 KiB at least and ~11x
        # for float arrays: queued as they are, a slow browser's backlog would cost 10x its size.)
        data = orjson.dumps(message).decode()
        # Run records go to everyone (a filtered page still keeps its runs list live);
        # events only to those who asked for that run.
        everyone = message.get("type") in RUN_RECORD_TYPES
        for sub in self.subscribers:
            if everyone or sub.wants(run_id):
                self._offer(sub, data)

    def _offer(self, sub: Subscriber, data: str) -> None:
        if sub.queued_bytes + len(data) <= sub.max_bytes and not sub.queue.full():
            sub.queue.put_nowait(data)
            sub.queued_bytes += len(data)
            self.delivered += 1
            return
        # Behind: drop what it has queued, tell it to refetch from the store.
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.resyncs += 1
        resync = orjson.dumps({"type": "resync", "run_id": None, "seq": None}).decode()
        sub.queue.put_nowait(resync)
        sub.queued_bytes = len(resync)
