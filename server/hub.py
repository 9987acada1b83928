"""Fan-out of live events to browsers: one bounded queue per subscriber, batched frames.

A subscriber gets frames, not one websocket message per event: every message published since
its last frame goes out together as one JSON array, at most one frame per FRAME_S (about the
rate a page redraws at), so the server's work per client scales with what a person can see,
not with steps x clients. Every event is still in a frame (spikes are the point); only the
framing changes. The first message after a quiet spell goes out at once: pacing adds latency
only while a stream is busy. Each message is serialised once, and each frame once for all the
subscribers that share a filter (the same `runs`). A subscriber that asked for the old framing
(`?frames=single` on /api/stream) gets each message as its own frame.

Nobody waits for the slowest reader: `publish` never blocks. A subscriber whose queue is full
(QUEUE_SIZE messages or QUEUE_BYTES bytes, whichever comes first, so a stuck browser costs the
server a bounded amount of memory whatever the message size) loses its queued messages and
gets one `resync` message instead; it then fetches the gap from the store by `seq` (the store
is the source of truth, this is only its live cache).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import orjson

RUN_RECORD_TYPES = ("run.update", "run.deleted")
QUEUE_SIZE = 2048  # messages waiting for one subscriber, at most
QUEUE_BYTES = 4 * 1024 * 1024  # ...and bytes
FRAME_S = 0.05  # a batched subscriber gets at most one frame per this (20 a second: the page renders every 50 ms)
RESYNC = orjson.dumps({"type": "resync", "run_id": None, "seq": None}).decode()


class Subscriber:
    def __init__(self, runs: set[str] | None, maxsize: int, max_bytes: int = QUEUE_BYTES,
                 batched: bool = True) -> None:
        self.runs = runs  # None = every run
        self.batched = batched  # frames are JSON arrays of messages; else one message per frame
        # Ready to send: JSON text (arrays when batched), each with how many messages it holds.
        self.frames: deque[tuple[str, int]] = deque()
        self.ready = asyncio.Event()
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.queued = 0  # messages in `frames`
        self.queued_bytes = 0
        self.resyncs = 0  # times this subscriber fell behind
        # Messages published before it subscribed and not flushed yet: not for it (a resuming
        # page read them from the store; every live message must be newer than its replay).
        self.skip = 0

    async def get(self) -> str:
        """The next frame for this subscriber (its sender calls this, nobody else). A batched
        subscriber that fell behind by several frames gets them as one."""
        while not self.frames:
            self.ready.clear()
            await self.ready.wait()
        if self.batched and len(self.frames) > 1:
            data = "[" + ",".join(f[1:-1] for f, _ in self.frames) + "]"
            self.frames.clear()
            self.queued = self.queued_bytes = 0
            return data
        data, n = self.frames.popleft()
        self.queued -= n
        self.queued_bytes -= len(data)
        return data

    def wants(self, run_id: str) -> bool:
        return self.runs is None or run_id in self.runs


class Hub:
    def __init__(self, queue_size: int = QUEUE_SIZE, frame_s: float = FRAME_S) -> None:
        self.queue_size = queue_size
        self.frame_s = frame_s
        self.subscribers: set[Subscriber] = set()
        self.delivered = 0  # messages put in subscribers' queues
        self.frames = 0  # frames built for batched subscribers (one per filter per flush)
        self._pending: list[tuple[str, bool, str]] = []  # (run id, for everyone, JSON) for the next frame
        self._flush: asyncio.TimerHandle | None = None
        self._last_flush = 0.0

    def subscribe(self, runs: set[str] | None = None, batched: bool = True) -> Subscriber:
        sub = Subscriber(runs, self.queue_size, batched=batched)
        sub.skip = len(self._pending)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    def publish(self, run_id: str, message: dict[str, Any]) -> None:
        """Send one message (must hold `type`, `run_id`, `seq`) to everyone who wants it."""
        if self.subscribers:
            # Serialised once for every subscriber, and decoded once: a str of exactly its size.
            # (orjson's bytes keep the buffer it sized for the worst case, 4 KiB at least and ~11x
            # for float arrays: queued as they are, a slow browser's backlog would cost 10x its size.)
            self.publish_json(run_id, [orjson.dumps(message).decode()], message.get("type") in RUN_RECORD_TYPES)

    def publish_json(self, run_id: str, texts: list[str], everyone: bool = False) -> None:
        """Messages of one run, serialised already (the ingest path has their JSON from the
        store). Run records go to everyone (a filtered page still keeps its runs list live);
        events only to those who asked for that run."""
        if not self.subscribers or not texts:
            return
        for sub in self.subscribers:
            if not sub.batched and (everyone or sub.wants(run_id)):
                for data in texts:
                    self._offer(sub, data, 1)
        self._pending += [(run_id, everyone, t) for t in texts]
        if self._flush is None:
            loop = asyncio.get_running_loop()
            wait = self._last_flush + self.frame_s - time.monotonic()
            self._flush = loop.call_later(max(0.0, wait), self.flush)

    def flush(self) -> None:
        """Everything published since the last flush, one frame per filter, to every batched
        subscriber that wants any of it."""
        self._flush = None
        self._last_flush = time.monotonic()
        pending, self._pending = self._pending, []
        groups: dict[tuple[frozenset[str] | None, int], list[Subscriber]] = {}
        for sub in self.subscribers:
            if sub.batched:
                groups.setdefault((None if sub.runs is None else frozenset(sub.runs), sub.skip), []).append(sub)
            sub.skip = 0
        for (runs, skip), subs in groups.items():
            texts = [t for run_id, everyone, t in pending[skip:] if runs is None or everyone or run_id in runs]
            if not texts:
                continue
            frame = "[" + ",".join(texts) + "]"
            self.frames += 1
            for sub in subs:
                self._offer(sub, frame, len(texts))

    def _offer(self, sub: Subscriber, data: str, n: int) -> None:
        if sub.queued_bytes + len(data) <= sub.max_bytes and sub.queued + n <= sub.maxsize:
            sub.frames.append((data, n))
            sub.queued += n
            sub.queued_bytes += len(data)
            self.delivered += n
        else:  # behind: drop what it has queued, tell it to refetch from the store
            sub.frames.clear()
            sub.resyncs += 1
            resync = "[" + RESYNC + "]" if sub.batched else RESYNC
            sub.frames.append((resync, 1))
            sub.queued, sub.queued_bytes = 1, len(resync)
        sub.ready.set()
