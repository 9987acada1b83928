"""External runs: your own training loop, live in the dashboard. `connect()` (exported as
`gradwatch.connect`) makes the run, `run.watch()` streams every step of it.

    from gradwatch import connect
    run = connect("http://127.0.0.1:8000", token=..., name="my-resnet", config={"lr": 0.1})
    run.watch(model, optimizer)          # every optimizer.step() is now a step in the dashboard
    for x, y in batches:
        if run.should_stop:              # someone pressed Stop in the dashboard
            break
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        run.record(loss)                 # optional: the loss beside the gradients (no host sync)
        optimizer.step()
    run.finish()                         # run.finished, then waits (bounded) for the server's acks

One REST call (`POST /api/runs` with `"external": true`) creates the run and returns its ingest
token. After that the run speaks the ingest protocol of the built-in workers, through the same
`IngestClient`: a sender thread, a bounded outbox, a per-run `seq`, and a resend of everything
unacknowledged after a reconnect. The training loop never waits on the network: while the
server is away, events wait in the outbox (when it is full, metrics are coalesced away and a
`dropped` event says so) and go out when it is back. Only `connect()` itself, once, and
`finish()`, bounded by its timeout, wait for the server.

The REST call is plain urllib (trainer/rest.py): the trainer stays importable without the
server's packages.
"""

from __future__ import annotations

import atexit
import math
import os
import time
from typing import Any
from urllib.parse import quote

import torch
from torch import nn

from . import events
from .diagnosis import Diagnosis
from .loop import Control
from .models import count_params
from .probe import Probe, watch
from .rest import ApiError, api_request
from .worker import IngestClient

DEFAULT_URL = "http://127.0.0.1:8000"


class Run:
    """An external run on a gradwatch server, fed by this process's own training loop."""

    def __init__(self, base_url: str, record: dict[str, Any], ingest_token: str,
                 max_pending: int = 100_000, alert_factor: float = 10.0, linger: float = 0.1,
                 compress: bool = False) -> None:
        self.base_url = base_url.rstrip("/")
        self.id: str = record["id"]
        self.name: str = record["name"]
        self.config: dict[str, Any] = record.get("config") or {}
        self.control = Control()  # the server's Stop (and live changes) land here
        ws_base = self.base_url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)
        # Each step's events (metrics, and the diagnosis's alerts) are made on the sender thread
        # (`_step_events`): the training thread only hands the probe's record over.
        self.client = IngestClient(f"{ws_base}/api/ingest/{quote(self.id)}", ingest_token,
                                   control=self.control, max_pending=max_pending,
                                   linger=linger, compression="deflate" if compress else None,
                                   prepare=self._step_events)
        self.probe: Probe | None = None
        self.alert_factor = alert_factor
        self._diagnosis: Diagnosis | None = None  # made by watch(), when the layers are known
        self.summary: dict[str, Any] = Diagnosis([], alert_factor).summary  # until then, an empty one
        self._val: tuple[float, float] | None = None
        self._started = time.perf_counter()
        self._finished = False
        # A script that ends without finish() still gets its buffered steps stored, and a reason.
        atexit.register(self._at_exit)

    @property
    def url(self) -> str:
        """The dashboard, with this run selected (a browser that is not signed in is sent to the
        sign-in page first and brought back here)."""
        return f"{self.base_url}/?runs={self.id}&focus={self.id}"

    @property
    def should_stop(self) -> bool:
        """True once someone asked this run to stop (the dashboard's Stop, `POST .../stop`)."""
        return self.control.stop_requested

    # ---- streaming --------------------------------------------------------------------

    def watch(self, model: nn.Module, optimizer: torch.optim.Optimizer, stats_every: int = 10) -> Probe:
        """Hook optimizer.step(): from now on every step is sent, per-layer statistics included
        (and every `stats_every` steps the costlier ones: activations, BatchNorm drift)."""
        if self.probe is not None:
            raise RuntimeError(f"run {self.id} already watches a model; call watch() once per run")
        self.probe = watch(model, optimizer, on_step=self._on_step, stats_every=stats_every)
        self._diagnosis = Diagnosis(self.probe.names, self.alert_factor, loss_given=False)
        self.summary = self._diagnosis.summary
        device = str(self.probe.params[0].device)
        self.emit(events.run_started(self.probe.layers, device, count_params(model), self.config))
        return self.probe

    def record(self, loss: torch.Tensor | None = None, accuracy: torch.Tensor | None = None,
               val_loss: float | None = None, val_accuracy: float | None = None) -> None:
        """This step's loss/accuracy (device tensors: no host sync), before optimizer.step().

        val_loss/val_accuracy (numbers, when you evaluate) go with the next step sent."""
        if self.probe is None:
            raise RuntimeError("call run.watch(model, optimizer) before run.record()")
        self.probe.record(loss, accuracy)
        if val_loss is not None or val_accuracy is not None:
            self._val = (math.nan if val_loss is None else float(val_loss),
                         math.nan if val_accuracy is None else float(val_accuracy))

    def emit(self, event: dict[str, Any]) -> None:
        """Send one wire-format event (gradwatch.events); never blocks. Used by watch() and by
        `gradwatch train --server`, whose loop makes the events itself."""
        if self._finished:
            return
        if event["type"] == events.RUN_FINISHED:
            self._finished = True
        self.client.emit(event)

    def _on_step(self, stats: dict[str, Any]) -> None:
        val, self._val = self._val, None
        if not self._finished:
            self.client.emit_later((stats, val))

    def _step_events(self, item: tuple[dict[str, Any], tuple[float, float] | None]) -> list[dict[str, Any]]:
        """One step's events: its metrics, then the diagnosis's alerts. Called by the client, in
        step order, on its sender thread (or in finish()): the detector's ~0.3 ms a step (numpy
        calls on a few arrays; bench/integration_overhead.py) is not the training thread's."""
        stats, val = item
        out = [events.metrics(stats, val)]
        if val is not None:
            self._diagnosis.validated(*val)
        # Your loop decides whether to go on after a non-finite step; the dashboard shows where it went wrong.
        return out + self._diagnosis.step(stats)

    # ---- the end ----------------------------------------------------------------------

    def finish(self, status: str | None = None, reason: str | None = None, timeout: float = 30.0) -> bool:
        """Send run.finished and wait up to `timeout` s for the server to store everything.

        status defaults to "stopped" after a stop request, else "completed" (or pass "failed",
        "diverged"). Returns True when every event was acknowledged; calling it again is harmless."""
        if self.probe is not None:
            self.probe.close()  # the last step's values (CUDA: still in flight), then unhook
        self.client.prepare_now()  # every step's events and alerts made: the summary is complete
        if not self._finished:
            for event in self._diagnosis.close() if self._diagnosis is not None else ():
                self.emit(event)
            if status is None:
                status = "stopped" if self.should_stop else "completed"
            if reason is None and status == "stopped" and self.should_stop:
                reason = "stopped on request"
            seconds = time.perf_counter() - self._started
            summary = {**self.summary, "seconds": seconds,
                       "steps_per_s": self.summary["step"] / seconds if seconds > 0 else None}
            self.emit(events.run_finished(status, reason, summary))
        atexit.unregister(self._at_exit)
        return self.client.close(timeout=timeout)

    def _at_exit(self) -> None:
        self.finish("failed", "the script exited without calling run.finish()", timeout=10)

    @property
    def error(self) -> str | None:
        """Why the server refused this run's events for good (bad token, run deleted), if it did."""
        return self.client.fatal

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.finish()
        elif issubclass(exc_type, KeyboardInterrupt):
            self.finish("stopped", "interrupted (Ctrl-C)")
        else:
            self.finish("failed", f"{exc_type.__name__}: {exc}")


def connect(url: str = DEFAULT_URL, token: str | None = None, name: str | None = None,
            config: dict[str, Any] | None = None, max_pending: int = 100_000, timeout: float = 10.0,
            alert_factor: float = 10.0, linger: float = 0.1, compress: bool = False) -> Run:
    """Create an external run on the gradwatch server at `url` and return it, ready to `watch()`.

    token: the server's GRADWATCH_TOKEN (default: that environment variable).
    config: anything that describes your run (a small JSON object); the dashboard shows it.
    max_pending: events buffered while the server is away; beyond it metrics are coalesced.
    linger: seconds between two sends; the steps of that time go in one message (one wake-up of
    the sender thread, one store transaction on the server), so a fast loop pays for its sends
    once per interval, not once per step, and the dashboard is that much behind. 0: each step is
    sent as soon as it is taken.
    compress: websocket compression (permessage-deflate) of what is sent: about half the bytes (a
    41-tensor model sends ~3.3 KB a step uncompressed), for ~0.1 ms of CPU a step in this process
    and some in the server's. Off by default: the training process's time matters more than a few
    KB/s; turn it on over a slow link.
    Raises ConnectionError when the server cannot be reached, ApiError when it refuses."""
    token = token if token is not None else os.environ.get("GRADWATCH_TOKEN") or None
    body = {"name": name, "config": config or {}, "external": True}
    record = api_request(url, "POST", "/api/runs", token, body, timeout=timeout)
    ingest_token = record.get("token")
    if not ingest_token:
        raise ApiError("POST", url.rstrip("/") + "/api/runs", 201,
                       "the server did not return an ingest token: is it a gradwatch with external runs?")
    return Run(url, record, ingest_token, max_pending=max_pending, alert_factor=alert_factor, linger=linger,
               compress=compress)
