"""Worker process: `python -m gradwatch.worker --server URL --run ID` (token in GRADWATCH_RUN_TOKEN).

It connects to the server's ingest websocket, receives the run's config in the server's hello,
runs `train()` and streams every event from a background sender thread. Training never waits on
the network: events go into a bounded outbox; when it is full, metrics events are coalesced away
(counted, and a `dropped` event says so) rather than stalling the step. Every event has a
per-run `seq`; the server acknowledges what it stored, and after a reconnect the sender resends
everything after the last acknowledged `seq`, so nothing is lost and nothing doubles.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from itertools import islice
from typing import Any

import orjson
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect as ws_connect

from . import events
from .config import RunConfig
from .loop import Control, train

MAX_BATCH = 512  # events per websocket message
# Bytes per websocket message, under the server's 4 MiB (server/routes/ingest.py MAX_INGEST_MESSAGE):
# 512 metrics events of a 300-tensor model are ~6 MB, and the server fails a run that sends more.
MAX_MESSAGE_BYTES = 3 * 1024 * 1024
HEARTBEAT_S = 1.0  # an idle sender says it is alive this often; the server marks a silent run `stalled`
HEARTBEAT = orjson.dumps({"type": events.HEARTBEAT})  # not an event: no seq, not stored
WORKER_NICE = 10  # niceness a server-launched worker adds to its own (GRADWATCH_WORKER_NICE; 0: none)


class IngestClient:
    """Bounded, resending event sender on its own thread. Also used by `gradwatch.connect`."""

    def __init__(self, url: str, token: str, control: Control | None = None, max_pending: int = 100_000,
                 linger: float = 0.0, compression: str | None = "deflate",
                 prepare: Callable[[Any], list[dict[str, Any]]] | None = None) -> None:
        """linger: seconds a send waits after the previous one, so that the steps of that time go
        in one message (one wake-up of this thread, one ack, one store transaction on the server
        instead of one per step); 0 sends each event as soon as it is emitted.
        compression: "deflate" (websocket permessage-deflate: about half the bytes of the numbers'
        text, for ~0.2-0.4 ms of this thread's CPU per 10 KB message, and the server's to inflate
        it) or None.
        prepare: turns what `emit_later()` was given into events, on this client's thread (or in
        close(), or before an `emit()`), in the order given: work the training thread hands off."""
        self.url = url
        self.linger = linger
        self.compression = compression
        self.token = token
        self.control = control or Control()
        self.max_pending = max_pending
        self.hello: dict[str, Any] | None = None
        self.hello_ready = threading.Event()
        self.fatal: str | None = None  # the server refused us for good (bad token, unknown run)
        self._outbox: deque[tuple[int, dict[str, Any]]] = deque()
        self._prepare = prepare
        self._later: deque[Any] = deque()  # emit_later()'s items, not yet prepared
        self._preparing = threading.Lock()  # one prepare pass at a time, so events keep their order
        self._seq = 0  # last seq handed out
        self._acked = 0  # last seq the server confirmed stored
        self._sent = 0  # last seq written to the current connection
        self._dropped: list[int] = []  # steps of metrics events coalesced away
        # Seconds from each event's `time` (its step) to its first send: is the sender starved?
        self.send_lag: deque[float] = deque(maxlen=100_000)
        self._high = 0  # highest seq ever sent (a resend is not a first send)
        self.messages = 0  # websocket messages of events sent (resends included)
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="gradwatch-sender", daemon=True)
        self._thread.start()

    # ---- training thread side --------------------------------------------------------

    def emit(self, event: dict[str, Any]) -> None:
        if self._prepare is not None:  # what emit_later() was given goes first
            with self._preparing:
                self._prepare_later()
                with self._cond:
                    self._accept(event)
            return
        with self._cond:
            self._accept(event)

    def emit_later(self, item: Any) -> None:
        """Hand `item` to `prepare` (see __init__), which makes its events on this client's
        thread: the training thread only queues it."""
        with self._cond:
            self._later.append(item)
            self._cond.notify()
            backlog = len(self._later) >= self.max_pending  # the sender is not keeping up (or away)
        if backlog:
            self.prepare_now()

    def prepare_now(self) -> None:
        """Make the events of everything emit_later() was given, in this thread."""
        if self._prepare is None:
            return
        with self._preparing:
            self._prepare_later()

    def _prepare_later(self) -> None:  # holding self._preparing
        with self._cond:
            items = list(self._later)
            self._later.clear()
        if not items:
            return
        made = []
        for item in items:
            try:
                made += self._prepare(item)
            except Exception:  # noqa: BLE001 - a bug here must not stop the sending
                print(f"gradwatch: could not prepare an event:\n{traceback.format_exc()}", file=sys.stderr)
        with self._cond:
            for event in made:
                self._accept(event)  # (each wakes the sender)

    def _accept(self, event: dict[str, Any]) -> None:  # holding self._cond
        if len(self._outbox) >= self.max_pending and event["type"] == events.METRICS:
            self._dropped.append(event.get("step", -1))
            return
        if self._dropped:
            d = self._dropped
            self._dropped = []
            self._push(events.dropped(len(d), d[0], d[-1]))
        self._push(event)
        self._cond.notify()

    def _push(self, event: dict[str, Any]) -> None:
        self._seq += 1
        event["seq"] = self._seq
        self._outbox.append((self._seq, event))

    def close(self, timeout: float = 30.0) -> bool:
        """Wait until every event is acknowledged (or timeout); True when all were."""
        deadline = time.monotonic() + timeout
        self.prepare_now()
        with self._cond:
            while self._acked < self._seq and self.fatal is None and time.monotonic() < deadline:
                self._cond.wait(0.1)
            self._closing = True
            self._cond.notify_all()
            done = self._acked >= self._seq
        self._thread.join(timeout=2.0)
        return done

    # ---- sender thread ---------------------------------------------------------------

    def _run(self) -> None:
        backoff = 0.2
        while not self._closing and self.fatal is None:
            try:
                with ws_connect(self.url, additional_headers={"Authorization": f"Bearer {self.token}"},
                                max_size=2**22, open_timeout=10, close_timeout=2,
                                compression=self.compression) as ws:
                    backoff = 0.2
                    self._session(ws)
            except InvalidStatus as e:
                code = e.response.status_code
                if code in (401, 403, 404):
                    self.fatal = f"server refused the ingest connection (HTTP {code})"
                    self.hello_ready.set()
                    with self._cond:
                        self._cond.notify_all()
                    return
            except (OSError, ConnectionClosed, TimeoutError):
                pass  # server away: keep buffering, try again
            if not self._closing:
                self.prepare_now()  # the server is away: what was handed off still becomes events
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _session(self, ws: Any) -> None:
        hello = orjson.loads(ws.recv(timeout=10))
        if hello.get("type") == "error":
            self.fatal = hello.get("message", "refused")
            self.hello_ready.set()
            return
        self.hello = hello
        with self._cond:
            self._ack(int(hello.get("acked_seq", 0)))
            self._sent = self._acked
        self.hello_ready.set()
        reader = threading.Thread(target=self._read, args=(ws,), daemon=True, name="gradwatch-reader")
        reader.start()
        # From this thread, not the training loop's: the beat says the process lives and its
        # connection works even while one step takes minutes.
        last_send = time.monotonic()
        while reader.is_alive():
            wait = last_send + self.linger - time.monotonic()
            if wait > 0 and not self._closing:
                time.sleep(wait)  # this interval's steps gather; emit() wakes no one meanwhile
            with self._cond:
                while self._sent >= self._seq and not self._later and not self._closing and reader.is_alive() \
                        and time.monotonic() - last_send < HEARTBEAT_S:
                    self._cond.wait(0.2)
            self.prepare_now()
            with self._cond:
                if self._closing and self._acked >= self._seq:
                    return
                # The first unsent events; not a copy of the whole outbox (100k events while the
                # server was away) for each send.
                batch = list(islice((e for s, e in self._outbox if s > self._sent), MAX_BATCH))
                if not batch and self._closing:  # all sent, waiting for the last acks
                    self._cond.wait(0.05)
            if batch:
                # Serialised here, off the training thread; halved until it fits in one message.
                body = orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY)
                while len(body) > MAX_MESSAGE_BYTES and len(batch) > 1:
                    batch = batch[: len(batch) // 2]
                    body = orjson.dumps(batch, option=orjson.OPT_SERIALIZE_NUMPY)
                ws.send(b'{"type":"batch","events":' + body + b"}")
                self.messages += 1
                now = time.time()
                self.send_lag.extend(now - e["time"] for e in batch
                                     if e["seq"] > self._high and isinstance(e.get("time"), (int, float)))
                self._high = max(self._high, batch[-1]["seq"])
                with self._cond:
                    self._sent = max(self._sent, batch[-1]["seq"])
                last_send = time.monotonic()
            elif time.monotonic() - last_send >= HEARTBEAT_S:
                ws.send(HEARTBEAT)
                last_send = time.monotonic()
        # The reader ended: the connection is gone; _run reconnects and resends after _acked.

    def _read(self, ws: Any) -> None:
        try:
            for raw in ws:
                msg = orjson.loads(raw)
                kind = msg.get("type")
                if kind == "ack":
                    with self._cond:
                        self._ack(int(msg["seq"]))
                        self._cond.notify_all()
                elif kind == "control":
                    if msg.get("stop"):
                        self.control.stop()
                    if msg.get("set"):
                        try:
                            self.control.set(source=msg.get("source", "api"), **msg["set"])
                        except ValueError as e:  # the server validates first; never crash the run on it
                            print(f"gradwatch: ignored control message: {e}", file=sys.stderr)
        except (ConnectionClosed, OSError):
            pass
        with self._cond:
            self._cond.notify_all()

    def _ack(self, seq: int) -> None:
        self._acked = max(self._acked, seq)
        while self._outbox and self._outbox[0][0] <= self._acked:
            self._outbox.popleft()


def cap_gpu_memory(fraction: str | None) -> None:
    """This process's share of its GPU's memory (workers sharing a GPU); past it, allocations
    fail with torch's out-of-memory error and the run ends `failed` saying so."""
    if not fraction or float(fraction) <= 0:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))


def lower_autogroup(nice: int) -> None:
    """Linux's autogroups (sched_autogroup_enabled, on by default on desktops and many servers)
    share the CPU fairly between sessions first, and a process's nice counts only within its own
    session. A worker leads a session of its own (so that a stop reaches its whole process
    group), so without this its nice would not lower it against the server at all: measured, the
    server's event loop waited 1.5 s of every 2 s for a core with four niced workers training.
    The session's autogroup gets the same nice (raising it needs no privilege)."""
    try:
        with open("/proc/self/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:  # no autogroups (kernel without them, or another OS): nice alone does it
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="gradwatch training worker (started by the server)")
    ap.add_argument("--server", required=True, help="server base URL, e.g. http://127.0.0.1:8000")
    ap.add_argument("--run", required=True, help="run id")
    ap.add_argument("--data-dir", default=None, help="where datasets are downloaded/cached")
    args = ap.parse_args(argv)
    token = os.environ.get("GRADWATCH_RUN_TOKEN", "")
    threads = os.environ.get("GRADWATCH_TORCH_THREADS")
    if threads:  # set by the server so that workers training at once do not oversubscribe the cores
        import torch

        torch.set_num_threads(max(1, int(threads)))
    base = args.server.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    client = IngestClient(f"{base}/api/ingest/{args.run}", token)
    # Below the server's CPU priority: with every core training, the server's event loop (and the
    # dashboards it feeds) still gets the CPU when it needs it. Costs training a few percent when
    # the server is busy (docs/benchmarks.md), nothing when it is idle. Linux's nice is per
    # thread: the sender thread, started above, keeps this process's priority, so that within
    # the worker a step's send does not wait behind its own training (threads torch starts later
    # from this one inherit the lower priority).
    nice = int(os.environ.get("GRADWATCH_WORKER_NICE", WORKER_NICE))
    if nice > 0:
        os.nice(nice)
        lower_autogroup(nice)
    if not client.hello_ready.wait(60) or client.hello is None:
        print(f"gradwatch worker: no hello from {base}: {client.fatal or 'timed out'}", file=sys.stderr)
        return 3
    status = 0
    try:
        cfg = RunConfig.from_dict(client.hello["config"])
        cap_gpu_memory(os.environ.get("GRADWATCH_GPU_MEMORY_FRACTION"))
        # The server's hello also says where this run keeps its checkpoints and, for a fork, the
        # checkpoint it starts from and the changes to make there (a server's paths, not a request's).
        hello = client.hello
        train(cfg, client.emit, client.control, data_dir=args.data_dir, checkpoints=hello.get("checkpoints"),
              resume=hello.get("resume"), changes=hello.get("changes"))
    except Exception as e:  # noqa: BLE001 - any failure becomes a `failed` run with its reason
        tb = traceback.format_exc()
        print(tb, file=sys.stderr)
        reason = f"{type(e).__name__}: {e}"
        client.emit(events.run_finished("failed", reason, {"traceback": tb[-4000:]}))
        status = 1
    if not client.close(timeout=60):
        print("gradwatch worker: some events were not acknowledged before exit", file=sys.stderr)
        status = status or 2
    lag = sorted(client.send_lag)
    if lag:  # read by bench/stream_load.py from the run's log
        print(f"gradwatch worker: step->send delay p50 {lag[len(lag) // 2] * 1000:.2f} ms, "
              f"p99 {lag[int(0.99 * (len(lag) - 1))] * 1000:.2f} ms over {len(lag)} events", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
