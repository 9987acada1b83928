"""A metrics event and its columns: what of it the columnar tables hold, and the event rebuilt.

`series` holds every metrics event's scalars and per-layer arrays (float32 blobs); `layer_stats`
the every-stats_every-steps statistics of one that carries `stats`. So that each fact is stored
once, the event's `events` row keeps the rest of it: each array that its blob gives back
exactly is replaced by `[]` there (series_row), and put back on reading (rebuild).

Exactly means the same JSON text. The probe sends float32 values (as Python floats); a float32
widened to a double is that double again, and orjson prints it as it did the first time. An
array with anything else in it (float64 values from an older worker or a person's own code,
integers, strings) stays in the row as it was sent, so the text is the same there too.
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import orjson
from gradwatch.stats import STORED_STATS, STORED_STEP

SERIES_SCALARS = ("step", "time", "loss", "accuracy", "global_grad_norm")
# The per-layer statistics (gradwatch.stats, the registry): a float32 BLOB column each, in `series`
# (every step) or `layer_stats` (every stats_every steps).
SERIES_LAYERS = STORED_STEP
STATS_LAYERS = STORED_STATS
# Version 2's per-layer columns (NOT NULL: every metrics event has them). A statistic added to the
# registry since is a nullable column, added by migrations.registry_columns; a run that never sent
# it has NULL there, and its answers leave it out.
SERIES_FIRST = ("grad_norm", "weight_norm", "update_ratio")
STATS_FIRST = ("act_mean", "act_std", "dead_frac", "eff_lr", "bn_mean_drift", "bn_var_drift")  # version 3's
# Scalars added to `series` later (each by a migration, so after the blobs in the table): a run
# that never sent one has NULL there.
SERIES_ADDED = ("lr",)
SERIES_COLUMNS = ("run_id", "seq", *SERIES_SCALARS, *SERIES_LAYERS, *SERIES_ADDED)  # named in every insert
STATS_COLUMNS = ("run_id", "seq", "step", *STATS_LAYERS)
_FLOAT_OR_NULL = {float, type(None)}

def step_of(e: dict[str, Any]) -> int:
    step = e.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else 0

def num(v: Any) -> float | None:
    """A number for a REAL column; what is not one (a worker's bug, a hand-made event) is NULL:
    the event is stored whole anyway, and one bad value must not refuse the batch."""
    if v is None or isinstance(v, bool):
        return None
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return None

_FLOAT = {float}


def pack(values: Any) -> tuple[bytes, bool]:
    """Per-layer values (null = non-finite) as float32 bytes, and whether those bytes give the
    values' JSON back exactly: every value a float (or null) that float32 holds bit for bit, a
    non-finite one (orjson writes null) where the bytes hold one. A value that cannot be read as
    a number is NaN."""
    if not isinstance(values, list) or not values:
        return b"", False
    try:  # the usual case, all floats: converted and compared in C (array, list ==), ~1 us for 26
        narrow = array("f", values)  # beyond float32's range: inf, as the value it is
    except (TypeError, OverflowError):  # a null, or something odd
        pass
    else:
        return narrow.tobytes(), set(map(type, values)) == _FLOAT and narrow.tolist() == values
    with np.errstate(over="ignore", invalid="ignore"):
        try:  # numbers and nulls, converted in one go
            wide = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            out = [num(v) for v in values]
            return np.array([np.nan if v is None else v for v in out], dtype=np.float32).tobytes(), False
        narrow = wide.astype(np.float32)
        if wide.ndim != 1 or not set(map(type, values)) <= _FLOAT_OR_NULL:
            return narrow.tobytes(), False
        back = narrow.astype(np.float64)
        finite = np.isfinite(wide)
        exact = bool(np.array_equal(finite, np.isfinite(back))
                     and np.array_equal(back.view(np.int64)[finite], wide.view(np.int64)[finite]))
    return narrow.tobytes(), exact

def series_row(run_id: str, e: dict[str, Any]) -> tuple[tuple, tuple | None, dict[str, Any] | None]:
    """A metrics event's columns: its `series` row, its `layer_stats` row (None without stats),
    and the event as its `events` row keeps it: each array its blob gives back exactly replaced
    by [] (None when there is none: the row keeps the event as sent)."""
    seq, step = e["seq"], step_of(e)
    packed = [pack(e.get(k)) for k in SERIES_LAYERS]
    # A statistic the event does not carry (one added to the registry since it was sent): NULL.
    series = (run_id, seq, step, *(num(e.get(k)) for k in SERIES_SCALARS[1:]),
              *(p[0] if p[0] or k in SERIES_FIRST else None for k, p in zip(SERIES_LAYERS, packed, strict=True)),
              *(num(e.get(k)) for k in SERIES_ADDED))
    slim: dict[str, Any] = {k: [] for k, p in zip(SERIES_LAYERS, packed, strict=True) if p[1]}
    stats_row = None
    stats = e.get("stats")
    if isinstance(stats, dict):
        packed = [pack(stats.get(k)) for k in STATS_LAYERS]
        stats_row = (run_id, seq, step, *(p[0] if p[0] or k in STATS_FIRST else None
                                          for k, p in zip(STATS_LAYERS, packed, strict=True)))
        slim_stats = {k: [] for k, p in zip(STATS_LAYERS, packed, strict=True) if p[1]}
        if slim_stats:
            slim["stats"] = {**stats, **slim_stats}
    return series, stats_row, ({**e, **slim} if slim else None)

def rebuild(data: str, blobs: tuple) -> str:
    """A metrics event's stored text with its arrays put back: each [] of a per-layer field
    whose column has values (`blobs`: SERIES_LAYERS' then STATS_LAYERS', None without a row)."""
    e = orjson.loads(data)
    for k, blob in zip(SERIES_LAYERS, blobs, strict=False):
        if blob and e.get(k) == []:
            e[k] = _floats(blob)
    stats = e.get("stats")
    if isinstance(stats, dict):
        for k, blob in zip(STATS_LAYERS, blobs[len(SERIES_LAYERS):], strict=True):
            if blob and stats.get(k) == []:
                stats[k] = _floats(blob)
    return orjson.dumps(e, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _floats(blob: bytes) -> list[float] | np.ndarray:
    """float32 bytes as the doubles they were sent as (NaN/inf print as null): a list of Python
    floats, or past 64 values a float64 array (orjson prints both alike; the array's setup costs
    more, its printing less: ~25% less for 300 values)."""
    if len(blob) > 256:
        return np.frombuffer(blob, dtype=np.float32).astype(np.float64)
    values = array("f")
    values.frombytes(blob)
    return values.tolist()

