"""Checkpoints of a built-in run, so that it can be forked from a step with other settings.

A checkpoint "at step S" is the whole state from which step S runs: model (with BatchNorm's
running statistics), optimizer (momentum buffers, Adam moments), the live values (l2, lr,
grad_clip), the RNG states (CPU and CUDA: dropout), the data position (the batch order's
generator, the epoch's permutation and the position in it) and the alert detector's baselines
(older checkpoints have none: a fork from one judges from fresh baselines). Restored, step S runs
exactly as it did in the parent; on the CPU a fork with no changes repeats the parent bit for bit.

One file per checkpoint, `step-00000050.pt` in the run's folder:

    MAGIC (8 bytes) | payload length (8, little-endian) | sha256 of the payload (32) | payload

where the payload is `torch.save` of plain dicts, lists and tensors. Written to a temporary file,
fsynced, then renamed over (atomic: a crash leaves the old set, never half a file). Read back,
the length and digest are checked before anything is unpickled, and the payload goes through
`torch.load(weights_only=True)`: a truncated or damaged file is refused with CheckpointError,
never loaded, and a file that is not ours cannot run code.

The functions that only name, list or check files do not import torch (the server uses them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

MAGIC = b"GWCKPT1\n"
HEADER = struct.Struct("<8sQ32s")  # magic, payload length, sha256 of the payload
FORMAT = 1  # the payload's own version (its "format" key)
NAME = re.compile(r"step-(\d{8})\.pt")

# Fields a fork may change (trainer/loop.py applies them at the fork's first step). The rest
# fix the architecture, the data or the optimizer's kind: a checkpoint of one cannot seed another.
FORK_FIELDS = ("l2", "lr", "grad_clip", "momentum", "dropout", "steps", "eval_every", "stats_every",
               "alert_factor", "checkpoint_every", "checkpoint_keep")
# Of those, the ones that change training itself (an `intervention` at the fork's first step).
TRAINING_FIELDS = ("l2", "lr", "grad_clip", "momentum", "dropout")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, truncated, damaged, or of another run's shape."""


def path_for(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.pt"


def steps(folder: str | Path) -> list[int]:
    """Steps of the checkpoints in `folder` (complete files only: temporaries are not named so)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := NAME.fullmatch(n)))


def read_verified(path: str | Path) -> bytes:
    """The payload of a checkpoint file, after checking its header, length and digest."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path.name} cannot be read: {e.strerror or e}") from None
    if len(blob) < HEADER.size or blob[:8] != MAGIC:
        raise CheckpointError(f"checkpoint {path.name} is not a gradwatch checkpoint (no header)")
    _, length, digest = HEADER.unpack_from(blob)
    payload = blob[HEADER.size:]
    if len(payload) != length:
        raise CheckpointError(f"checkpoint {path.name} is truncated or padded: {len(payload)} bytes of "
                              f"payload, its header says {length}")
    if hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path.name} is damaged: its sha256 does not match its header")
    return payload


def verify(path: str | Path) -> None:
    read_verified(path)


def write(path: str | Path, state: dict[str, Any]) -> int:
    """Write `state` atomically (temporary file, fsync, rename, fsync of the folder); returns bytes."""
    import torch

    path = Path(path)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "wb") as f:
        f.write(HEADER.pack(MAGIC, len(payload), hashlib.sha256(payload).digest()))
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a power cut
    finally:
        os.close(fd)
    return HEADER.size + len(payload)


def load(path: str | Path) -> dict[str, Any]:
    """A checked checkpoint's state, tensors on the CPU; CheckpointError when it cannot be used."""
    import pickle

    import torch

    payload = read_verified(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        raise CheckpointError(f"checkpoint {Path(path).name} could not be read back: {e}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {Path(path).name} has an unknown format")
    return state


def thin(have: list[int], keep: int, protected: Iterable[int] = ()) -> list[int]:
    """Which of the steps `have` to remove so that at most `keep` remain: the newest, the oldest and
    the protected ones stay; of the others, the one whose removal leaves the smallest gap goes
    first, again and again. What remains is spread over the whole run, denser nowhere in
    particular (the last K and every N-th, without choosing N in advance)."""
    kept = sorted(have)
    safe = set(protected)
    gone: list[int] = []
    while len(kept) > keep:
        candidates = [i for i in range(1, len(kept) - 1) if kept[i] not in safe]
        if not candidates:
            break
        i = min(candidates, key=lambda i: (kept[i + 1] - kept[i - 1], kept[i]))
        gone.append(kept.pop(i))
    return gone


def cpu_copy(obj: Any) -> Any:
    """A copy of a state (dicts, lists, tuples, tensors) with every tensor on the CPU. On the CPU
    this clones (training goes on changing the originals in place); on CUDA it is a device-to-host
    copy, a sync point, once per checkpoint."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class Keeper:
    """Writes a run's checkpoints off the training thread and keeps at most `keep` of them.

    The training thread only copies the state (cpu_copy); serialising, hashing, writing and
    thinning happen on one background thread. A checkpoint still being written when the next is
    due makes the training thread wait for it (at most one in flight: bounded memory)."""

    def __init__(self, folder: str | Path, keep: int) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.protected: set[int] = set()
        self.written: list[int] = []  # steps written by this run, in order
        self.error: str | None = None  # the last write's failure (the run goes on without it)
        self.seconds = 0.0  # time the training thread spent on checkpoints (copies and waits)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradwatch-checkpoint")
        self._inflight: Future | None = None

    def save(self, step: int, state: dict[str, Any]) -> None:
        """Hand a (copied) state to the writer."""
        self.wait()
        self._inflight = self._pool.submit(self._write, step, state)

    def _write(self, step: int, state: dict[str, Any]) -> None:
        try:
            write(path_for(self.folder, step), state)
        except OSError as e:  # a full disk: the run goes on, this checkpoint is missing
            self.error = f"checkpoint at step {step} not written: {e.strerror or e}"
            return
        self.written.append(step)
        self._thin()

    def _thin(self) -> None:
        for step in thin(steps(self.folder), self.keep, self.protected):
            path_for(self.folder, step).unlink(missing_ok=True)

    def protect(self, step: int) -> None:
        """Never thin this one away (the last checkpoint before a divergence)."""
        self.protected.add(step)

    def wait(self) -> None:
        if self._inflight is not None:
            self._inflight.result()
            self._inflight = None

    def close(self) -> None:
        self.wait()
        self._thin()  # with the protections made since the last write
        self._pool.shutdown(wait=True)
