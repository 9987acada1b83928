"""What a worker may say on the ingest socket: the events of trainer/events.py, each with a bounded
schema, and nothing else.

A run's ingest token is a narrower key than the server's: whoever holds it (our worker, a user's
own loop on another machine, anyone that loop's token leaked to) may add events to that one run,
and no more. So every event is checked before anything of its batch is stored or relayed:

- its `type` is one a worker sends (run.started, metrics, alert, alert.end, intervention,
  run.finished, dropped). Run records (run.update, run.deleted), resyncs and anything else come
  only from the server;
- it names no other run: a `run_id` is refused unless it is the socket's own (then dropped: the
  server adds it), and no event carries a run record (`run`);
- `seq` is a positive integer no further ahead of what is stored than the batch is long (a
  worker's seqs have no gaps), every integer fits a JavaScript number and SQLite, strings and
  lists have lengths, per-layer arrays are as long as the run's layer list;
- fields beyond each type's own may be small scalars (and, on alerts, short lists of small
  objects), so a worker newer than this server still gets through, bounded.

A batch with one bad event is refused whole (`BadEvent` says which event and why); the ingest
route then ends the run `failed` with that reason (server/routes/ingest.py). Checks are plain
type tests: a batch of 512 metrics events of 100 layers takes about 12 ms, as long as parsing it
(11 ms; 2.8 ms and 1.1 ms at 8 layers; best of 30 on the 2-core dev VM).
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from gradwatch.events import (
    ALERT,
    DROPPED,
    HEARTBEAT,
    INTERVENTION,
    METRICS,
    RUN_FINISHED,
    RUN_STARTED,
    TERMINAL,
)
from gradwatch.stats import BY_ACTIVATION, BY_BN, PER_STEP

ALERT_END = "alert.end"  # trainer/events.py's ALERT_END (not in every version of it)
WORKER_TYPES = (RUN_STARTED, METRICS, ALERT, ALERT_END, INTERVENTION, RUN_FINISHED, DROPPED)

MAX_INT = 2**53 - 1  # integers: exact in a browser, and far inside SQLite's 64 bits
MAX_LAYERS = 10_000  # parameter tensors of one run (the largest built-in model has 258)
MAX_NAME = 512  # a layer, module or statistic name
MAX_TEXT = 4096  # an alert message, an extra string
MAX_REASON = 16 * 1024  # why a run ended (an exception's message)
MAX_OBJECT = 64 * 1024  # bytes of JSON: a run.started config, a run.finished summary
MAX_KEYS = 48  # fields of one event
MAX_ITEMS = 16  # a short list of small objects on an alert (its `top`), and their fields
MAX_SHAPE = 8  # dimensions of a parameter tensor

_NUM = (int, float)
_NUM_OR_NULL = {int, float, type(None)}


class BadEvent(ValueError):
    """An ingest message that is not what a worker may send; the text says what and where."""


def parse_batch(data: bytes) -> list[dict[str, Any]]:
    """`{"type": "batch", "events": [...]}` -> its events (not yet checked), else BadEvent."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise BadEvent(f"not JSON ({e})") from None
    if not isinstance(msg, dict) or msg.get("type") != "batch" or not isinstance(msg.get("events"), list):
        raise BadEvent('expected {"type": "batch", "events": [...]}')
    return msg["events"]


def is_heartbeat(data: bytes) -> bool:
    if len(data) >= 64:
        return False
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(msg, dict) and msg.get("type") == HEARTBEAT and len(msg) == 1


class Checker:
    """The checks of one ingest connection; it follows the run's layer list and stored seq."""

    def __init__(self, run_id: str, layers: list[dict[str, Any]] | None, last_seq: int) -> None:
        self.run_id = run_id
        self.layers = layers or None
        self.last_seq = last_seq

    def check(self, events: list[Any]) -> None:
        """Raise BadEvent for the first event a worker may not send; drops a run_id that is the
        socket's own. A run.started earlier in the batch sets the layers later events align with."""
        layers = self.layers
        ahead = self.last_seq + len(events)
        for i, e in enumerate(events):
            where = f"event {i}"
            try:
                if not isinstance(e, dict):
                    raise BadEvent("expected an object")
                kind = e.get("type")
                where = f"event {i} ({kind!r}, seq {e.get('seq')!r})" if isinstance(kind, str) and len(kind) <= 32 \
                    else where
                if kind not in WORKER_TYPES:
                    raise BadEvent(f"type must be one of {', '.join(WORKER_TYPES)}: a worker sends no other "
                                   "(run records and resyncs come from the server)")
                if "run_id" in e:
                    if e["run_id"] != self.run_id:
                        raise BadEvent("run_id: a worker speaks for its own run only")
                    del e["run_id"]  # the server adds it
                if "run" in e:
                    raise BadEvent("run: a worker does not send run records")
                if len(e) > MAX_KEYS:
                    raise BadEvent(f"more than {MAX_KEYS} fields")
                seq = _int(e, "seq", 1, MAX_INT)
                if seq > ahead:  # type: ignore[operator]
                    raise BadEvent(f"seq {seq} is past the {ahead} this batch can reach (stored: {self.last_seq}; "
                                   "seqs have no gaps)")
                _num(e, "time", optional=True)
                if kind == METRICS:
                    _metrics(e, len(layers) if layers else None)
                elif kind == RUN_STARTED:
                    new = _run_started(e)
                    if layers and new != layers:
                        raise BadEvent("layers: differ from the ones this run started with")
                    layers = new
                else:
                    CHECKS[kind](e)
            except BadEvent as err:
                raise BadEvent(f"{where}: {err}") from None

    def accepted(self, events: list[dict[str, Any]], last_seq: int) -> None:
        """The batch was stored: follow its layers and the run's new last seq."""
        for e in events:
            if e["type"] == RUN_STARTED and not self.layers:
                self.layers = e["layers"]
        self.last_seq = max(self.last_seq, last_seq)


# ---- one check per type ------------------------------------------------------------------------

# The per-layer statistics are the registry's (gradwatch.stats): every-step ones are arrays as long
# as the layer list; REQUIRED_STEP are in every metrics event (older workers send no others).
REQUIRED_STEP = ("grad_norm", "weight_norm", "update_ratio")
METRICS_KNOWN = {"type", "seq", "time", "step", "loss", "accuracy", "global_grad_norm", *PER_STEP, "val_loss",
                 "val_accuracy", "lr", "stats"}


def _metrics(e: dict[str, Any], n_layers: int | None) -> None:
    _int(e, "step", 0, MAX_INT)
    for k in ("loss", "accuracy", "global_grad_norm", "val_loss", "val_accuracy", "lr"):
        _num(e, k, optional=True)
    widths = {_numbers(e, k, n_layers) for k in PER_STEP if k in REQUIRED_STEP or k in e}
    if len(widths) > 1:
        raise BadEvent(f"{', '.join(k for k in PER_STEP if k in e)} must be as long as each other")
    if "stats" in e:
        _stats(e["stats"])
    _extras(e, METRICS_KNOWN)


STATS_BY_ACTIVATION = BY_ACTIVATION  # one value per hidden activation (the registry's `per`)
STATS_BY_BN = BY_BN  # one per BatchNorm layer


def _stats(stats: Any) -> None:
    """trainer/probe.py's _stats_record: names of the hidden activations and BatchNorm layers,
    and per-name values."""
    if not isinstance(stats, dict) or len(stats) > MAX_KEYS:
        raise BadEvent(f"stats: expected an object of at most {MAX_KEYS} fields")
    acts = _names(stats, "act_layers")
    bns = _names(stats, "bn_layers")
    if "bn_feeds" in stats:
        feeds = stats["bn_feeds"]
        if not (isinstance(feeds, list) and len(feeds) == len(bns)
                and all(f is None or (isinstance(f, str) and len(f) <= MAX_NAME) for f in feeds)):
            raise BadEvent("stats.bn_feeds: expected a name or null per BatchNorm layer")
    for k, v in stats.items():
        if k in ("act_layers", "bn_layers", "bn_feeds"):
            continue
        width = len(acts) if k in STATS_BY_ACTIVATION else len(bns) if k in STATS_BY_BN else None
        if not isinstance(k, str) or len(k) > MAX_NAME:
            raise BadEvent("stats: field names are short strings")
        if isinstance(v, list):
            _numbers(stats, k, width, what=f"stats.{k}")
        elif width is not None or not _scalar(v):
            raise BadEvent(f"stats.{k}: expected a list of numbers")


def _run_started(e: dict[str, Any]) -> list[dict[str, Any]]:
    layers = e.get("layers")
    if not isinstance(layers, list) or not 0 < len(layers) <= MAX_LAYERS:
        raise BadEvent(f"layers: expected a list of 1 to {MAX_LAYERS} parameter tensors")
    for j, layer in enumerate(layers):
        if not isinstance(layer, dict) or len(layer) > MAX_ITEMS:
            raise BadEvent(f"layers[{j}]: expected an object")
        _str(layer, "name", MAX_NAME, what=f"layers[{j}].name")
        _str(layer, "module", MAX_NAME, optional=True, what=f"layers[{j}].module")
        shape = layer.get("shape")
        if not (isinstance(shape, list) and len(shape) <= MAX_SHAPE
                and all(type(d) is int and 0 <= d <= MAX_INT for d in shape)):
            raise BadEvent(f"layers[{j}].shape: expected at most {MAX_SHAPE} sizes")
        _extras(layer, {"name", "module", "shape"}, what=f"layers[{j}]")
    _str(e, "device", 64, optional=True)
    _int(e, "n_params", 0, MAX_INT, optional=True)
    _int(e, "n_classes", 0, MAX_INT, optional=True)
    if e.get("config") is not None:
        _object(e, "config")
    _extras(e, {"type", "seq", "time", "layers", "device", "n_params", "config", "n_classes"})
    return layers


def _alert(e: dict[str, Any]) -> None:
    _int(e, "step", 0, MAX_INT)
    _kind(e)
    _str(e, "message", MAX_TEXT)
    _int(e, "episode", 0, MAX_INT, optional=True)
    _str(e, "layer", MAX_NAME, optional=True)
    for k in ("value", "baseline", "ratio"):
        _num(e, k, optional=True)
    _extras(e, {"type", "seq", "time", "step", "kind", "message", "episode", "layer", "value", "baseline",
                "ratio"}, lists=True)


def _alert_end(e: dict[str, Any]) -> None:
    _int(e, "step", 0, MAX_INT)
    _kind(e)
    for k in ("episode", "start_step", "peak_step"):
        _int(e, k, 0, MAX_INT, optional=True)
    for k in ("peak_value", "peak_ratio"):
        _num(e, k, optional=True)
    _str(e, "layer", MAX_NAME, optional=True)
    _extras(e, {"type", "seq", "time", "step", "kind", "episode", "start_step", "peak_step", "peak_value",
                "peak_ratio", "layer"})


def _intervention(e: dict[str, Any]) -> None:
    _int(e, "step", 0, MAX_INT)
    _str(e, "field", 64)
    _str(e, "source", 64, optional=True)
    for k in ("old", "new"):
        if not _scalar(e.get(k)):
            raise BadEvent(f"{k}: expected a number, a short string, true/false or null")
    _extras(e, {"type", "seq", "time", "step", "field", "old", "new", "source"})


def _run_finished(e: dict[str, Any]) -> None:
    if e.get("status") not in TERMINAL:
        raise BadEvent(f"status: expected one of {', '.join(TERMINAL)}, got {_show(e.get('status'))}")
    _str(e, "reason", MAX_REASON, optional=True)
    if "source" in e:
        raise BadEvent("source: only the server ends a run on its own behalf")
    if e.get("summary") is not None:
        _object(e, "summary")
    _extras(e, {"type", "seq", "time", "status", "reason", "summary"})


def _dropped(e: dict[str, Any]) -> None:
    _int(e, "count", 0, MAX_INT)
    for k in ("first_step", "last_step"):  # -1: a step the sender did not know
        _int(e, k, -1, MAX_INT, optional=True)
    _extras(e, {"type", "seq", "time", "count", "first_step", "last_step"})


CHECKS = {ALERT: _alert, ALERT_END: _alert_end, INTERVENTION: _intervention, RUN_FINISHED: _run_finished,
          DROPPED: _dropped}


# ---- values ------------------------------------------------------------------------------------


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _int(e: dict[str, Any], k: str, lo: int, hi: int, optional: bool = False) -> int | None:
    v = e.get(k)
    if v is None and optional:
        return None
    if type(v) is not int or not lo <= v <= hi:
        raise BadEvent(f"{k}: expected an integer from {lo} to {hi}, got {_show(v)}")
    return v


def _num(e: dict[str, Any], k: str, optional: bool = False) -> None:
    v = e.get(k)
    if v is None and optional:
        return
    if type(v) not in (int, float) or not math.isfinite(v):
        raise BadEvent(f"{k}: expected a number, got {_show(v)}")


def _str(e: dict[str, Any], k: str, max_len: int, optional: bool = False, what: str | None = None) -> None:
    v = e.get(k)
    if v is None and optional:
        return
    if not isinstance(v, str) or len(v) > max_len:
        raise BadEvent(f"{what or k}: expected a string of at most {max_len} characters, got {_show(v)}")


def _kind(e: dict[str, Any]) -> None:
    v = e.get("kind")
    if not (isinstance(v, str) and 0 < len(v) <= 32 and v.replace("_", "").replace(".", "").isalnum()
            and v.isascii()):
        raise BadEvent(f"kind: expected a short name like grad_spike, got {_show(v)}")


def _names(stats: dict[str, Any], k: str) -> list[str]:
    v = stats.get(k, [])
    if not (isinstance(v, list) and len(v) <= MAX_LAYERS and all(isinstance(n, str) and len(n) <= MAX_NAME
                                                                  for n in v)):
        raise BadEvent(f"stats.{k}: expected a list of names")
    return v


def _numbers(e: dict[str, Any], k: str, width: int | None, what: str | None = None) -> int:
    """A per-layer list: numbers or null (a non-finite value), `width` of them when known."""
    v = e.get(k)
    if not isinstance(v, list) or len(v) > MAX_LAYERS or not set(map(type, v)) <= _NUM_OR_NULL:
        raise BadEvent(f"{what or k}: expected a list of numbers (null for non-finite)")
    if width is not None and len(v) != width:
        raise BadEvent(f"{what or k}: {len(v)} values for {width} layers")
    return len(v)


def _scalar(v: Any, max_len: int = MAX_TEXT) -> bool:
    if v is None or type(v) is bool:
        return True
    if type(v) is int:
        return -MAX_INT <= v <= MAX_INT
    if type(v) is float:
        return math.isfinite(v)
    return isinstance(v, str) and len(v) <= max_len


def _small_objects(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= MAX_ITEMS and all(
        isinstance(o, dict) and len(o) <= MAX_ITEMS
        and all(isinstance(k, str) and len(k) <= 64 and _scalar(x, MAX_NAME) for k, x in o.items()) for o in v)


def _extras(e: dict[str, Any], known: set[str], lists: bool = False, what: str = "") -> None:
    """Fields a newer worker may add: small scalars (on alerts also short lists of small objects)."""
    for k, v in e.items():
        if k in known:
            continue
        if not (isinstance(k, str) and len(k) <= 64):
            raise BadEvent(f"{what}: field names are short strings")
        if not (_scalar(v) or (lists and _small_objects(v))):
            raise BadEvent(f"{what + '.' if what else ''}{k}: expected a number, a short string, true/false or "
                           "null" + (", or a short list of small objects" if lists else ""))


def _object(e: dict[str, Any], k: str) -> None:
    """Free-form JSON (a config, a summary): an object, at most MAX_OBJECT bytes, plain values."""
    v = e.get(k)
    if not isinstance(v, dict):
        raise BadEvent(f"{k}: expected an object")
    try:
        size = len(orjson.dumps(v))  # refuses integers past 64 bits too
    except TypeError as err:
        raise BadEvent(f"{k}: not storable JSON ({err})") from None
    if size > MAX_OBJECT:
        raise BadEvent(f"{k}: {size} bytes of JSON, over {MAX_OBJECT}")
    if not _plain(v, 6):
        raise BadEvent(f"{k}: nested too deep, or an integer past 2**53")


def _plain(v: Any, depth: int) -> bool:
    if isinstance(v, dict):
        return depth > 0 and all(_plain(x, depth - 1) for x in v.values())
    if isinstance(v, list):
        return depth > 0 and all(_plain(x, depth - 1) for x in v)
    return _scalar(v, MAX_OBJECT)
