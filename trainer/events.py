"""The wire format, defined once. Every event is a plain dict with a `type`; the sender adds
`run_id` and `seq` (per-run sequence number, from 1, no gaps). JSON on the wire (orjson turns
NaN/inf into null). docs/api.md shows them as a browser receives them.
"""

from __future__ import annotations

import time
from typing import Any

RUN_STARTED = "run.started"
METRICS = "metrics"
ALERT = "alert"
ALERT_END = "alert.end"  # an alert episode closed: its peak
INTERVENTION = "intervention"
RUN_FINISHED = "run.finished"
DROPPED = "dropped"
HEARTBEAT = "heartbeat"  # sender -> server when idle, about every second; not an event (no seq, not stored)

# Final statuses a run can end in.
TERMINAL = ("completed", "stopped", "failed", "diverged")


def run_started(layers: list[dict], device: str, n_params: int, config: dict[str, Any],
                n_classes: int | None = None) -> dict[str, Any]:
    """Layer metadata once: name, module type and shape of every parameter, forward order;
    n_classes when the run knows it (a classifier: chance is 1/n_classes)."""
    return {"type": RUN_STARTED, "time": time.time(), "layers": layers, "device": device,
            "n_params": n_params, "config": config, "n_classes": n_classes}


def metrics(stats: dict[str, Any], val: tuple[float, float] | None = None) -> dict[str, Any]:
    """One step's values; `stats` is a probe record (step, time, loss, accuracy, per-layer arrays)."""
    event = {"type": METRICS, **stats}
    if val is not None:
        event["val_loss"], event["val_accuracy"] = val
    return event


def alert(step: int, kind: str, message: str, **data: Any) -> dict[str, Any]:
    return {"type": ALERT, "time": time.time(), "step": step, "kind": kind, "message": message, **data}


def alert_end(step: int, episode: int, kind: str, start_step: int, peak_step: int, peak_value: float,
              peak_ratio: float, layer: str | None) -> dict[str, Any]:
    """An alert episode (trainer/diagnosis.py) closed at `step`: where and how high it peaked."""
    return {"type": ALERT_END, "time": time.time(), "step": step, "episode": episode, "kind": kind,
            "start_step": start_step, "peak_step": peak_step, "peak_value": peak_value,
            "peak_ratio": peak_ratio, "layer": layer}


def intervention(step: int, field: str, old: Any, new: Any, source: str = "api") -> dict[str, Any]:
    """Who changed what at which step: applied before `step` ran."""
    return {"type": INTERVENTION, "time": time.time(), "step": step, "field": field,
            "old": old, "new": new, "source": source}


def run_finished(status: str, reason: str | None, summary: dict[str, Any]) -> dict[str, Any]:
    assert status in TERMINAL, status
    return {"type": RUN_FINISHED, "time": time.time(), "status": status, "reason": reason,
            "summary": summary}


def dropped(count: int, first_step: int, last_step: int) -> dict[str, Any]:
    """The sender's buffer was full: `count` metrics events between these steps were coalesced away."""
    return {"type": DROPPED, "time": time.time(), "count": count, "first_step": first_step,
            "last_step": last_step}
