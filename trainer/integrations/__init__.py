"""Integrations with the training loops people use: `gradwatch.integrations.lightning` (PyTorch
Lightning) and `gradwatch.integrations.transformers` (Hugging Face Trainer). Each is a callback
that calls `gradwatch.connect()` and `Run.watch()`, the same path as your own loop (docs/integrations.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any, depth: int = 0) -> Any:
    """A config value as JSON: numbers, strings, lists and dicts as they are; anything else as text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth < 4 and isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if depth < 4 and isinstance(value, list | tuple):
        return [jsonable(v, depth + 1) for v in value]
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."
