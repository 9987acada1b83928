"""gradwatch's trainer: PyTorch only, importable without the server's packages."""

from .config import RunConfig
from .probe import watch

__all__ = ["RunConfig", "watch"]
