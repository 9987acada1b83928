"""gradwatch's trainer: PyTorch only, importable without the server's packages.

The names below load on first use (PEP 562), so `import gradwatch.config` or `gradwatch.presets`
(the CLI's --help, the server's request schema) does not pay for importing torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import RunConfig
    from .external import Run, connect
    from .probe import watch

# `connect` lives in trainer/external.py: a submodule named `connect` would be bound over this
# function by the first `import gradwatch.connect`, whichever came first.
_EXPORTS = {"RunConfig": ".config", "watch": ".probe", "connect": ".external", "Run": ".external"}

__all__ = ["Run", "RunConfig", "connect", "watch"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value  # looked up once
        return value
    raise AttributeError(f"module 'gradwatch' has no attribute {name!r}")
