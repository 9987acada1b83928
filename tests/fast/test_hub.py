"""The hub (server/hub.py) on its own: filters, batched frames, a subscriber that falls behind,
a bounded backlog. Frames are flushed by hand (hub.flush()), so nothing here waits on a timer."""

from __future__ import annotations

import asyncio
import tracemalloc
from typing import Any

import orjson
from gradwatch.server.hub import QUEUE_BYTES, QUEUE_SIZE, Hub, Subscriber


def event(run_id: str, seq: int, kind: str = "metrics") -> dict[str, Any]:
    return {"type": kind, "run_id": run_id, "seq": seq}


async def drain(sub: Subscriber) -> list[list[dict[str, Any]]]:
    """What the subscriber's sender would send now: each frame from get(), as its messages."""
    got = []
    while sub.frames:  # get() waits only when nothing is queued
        parsed = orjson.loads(await sub.get())
        got.append(parsed if isinstance(parsed, list) else [parsed])
    return got


def test_a_filtered_subscriber_gets_its_runs_events_and_every_run_record_in_one_frame() -> None:
    async def scenario() -> None:
        hub = Hub()
        mine, everything = hub.subscribe({"a"}), hub.subscribe()
        hub.publish("a", event("a", 1))
        hub.publish("b", event("b", 1))
        hub.publish("b", {"type": "run.update", "run_id": "b", "seq": 1, "run": {"id": "b"}})
        hub.publish("a", event("a", 2))
        hub.flush()
        record = {"type": "run.update", "run_id": "b", "seq": 1, "run": {"id": "b"}}
        assert await drain(mine) == [[event("a", 1), record, event("a", 2)]]
        frames = await drain(everything)
        assert [[(m["run_id"], m["seq"]) for m in f] for f in frames] == [[("a", 1), ("b", 1), ("b", 1), ("a", 2)]]
        assert hub.frames == 2  # one frame per filter, built once

    asyncio.run(scenario())


def test_a_subscriber_that_asked_for_single_frames_gets_one_message_a_frame() -> None:
    async def scenario() -> None:
        hub = Hub()
        single = hub.subscribe({"a"}, batched=False)
        for seq in (1, 2, 3):
            hub.publish("a", event("a", seq))
        hub.flush()
        assert [[m["seq"] for m in f] for f in await drain(single)] == [[1], [2], [3]]

    asyncio.run(scenario())


def test_messages_published_before_a_subscription_are_not_sent_to_it() -> None:
    """A resuming page read them from the store already: the live stream starts after them."""
    async def scenario() -> None:
        hub = Hub()
        early = hub.subscribe()
        hub.publish("a", event("a", 1))
        late = hub.subscribe()
        hub.publish("a", event("a", 2))
        hub.flush()
        assert [m["seq"] for f in await drain(early) for m in f] == [1, 2]
        assert [m["seq"] for f in await drain(late) for m in f] == [2]

    asyncio.run(scenario())


def test_a_subscriber_that_falls_behind_gets_a_resync_and_slows_nobody() -> None:
    async def scenario() -> None:
        hub = Hub(queue_size=5)
        slow, reader = hub.subscribe(), hub.subscribe()
        got = []
        for seq in range(1, 21):
            hub.publish("a", event("a", seq))
            hub.flush()  # a frame per message: the slow one's queue fills at the sixth
            got += [m["seq"] for f in await drain(reader) for m in f]
        assert got == list(range(1, 21))  # the reader lost nothing
        backlog = [m for f in await drain(slow) for m in f]  # what it reads when it reads at last
        assert backlog[0] == {"type": "resync", "run_id": None, "seq": None}  # what it had is dropped
        later = [m["seq"] for m in backlog[1:]]
        assert later and later == list(range(later[0], 21)) and len(later) < 20  # it resumes after the resync
        assert slow.resyncs >= 1 and reader.resyncs == 0

    asyncio.run(scenario())


def test_the_hub_holds_a_bounded_backlog_for_a_subscriber_that_never_reads() -> None:
    """100 MiB published to a subscriber nobody drains: it holds at most its queue's byte cap
    (QUEUE_BYTES), counted by tracemalloc (Python's own allocations, not the process's RSS)."""
    async def scenario() -> tuple[int, int, int, int]:
        hub = Hub()
        stuck, reader = hub.subscribe(), hub.subscribe()
        payload = {"type": "metrics", "run_id": "r", "grad_norm": [1.2345678901234567] * 600}
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        for seq in range(1, 10_001):  # ~11 KiB each
            hub.publish("r", {**payload, "seq": seq})
            if seq % 16 == 0:  # a frame's worth: the hub flushes, the reader takes it
                hub.flush()
                while reader.frames:
                    await reader.get()
        held = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
        return held, stuck.queued_bytes, stuck.queued, stuck.resyncs

    held, queued_bytes, queued, resyncs = asyncio.run(scenario())
    assert queued_bytes <= QUEUE_BYTES and queued <= QUEUE_SIZE and resyncs >= 20
    assert held < QUEUE_BYTES + 2**20, f"{held / 2**20:.1f} MiB held"
