"""Forks: a new run that starts from a checkpoint of another, with some settings changed.

A built-in run keeps its checkpoints in `<data dir>/runs/<id>/checkpoints` (the worker writes
them, trainer/checkpoint.py). Forking run P at step S:

- picks P's newest checkpoint at or before S (none: 409 naming the nearest), checks its length
  and digest (damaged: 409 saying so), and creates the fork, a queued run with P's config and
  the changes, whose record keeps {parent, step, asked, changes};
- hard-links that checkpoint into the fork's own folder (a copy where links cannot be made), so
  that deleting P later leaves the fork whole (a fork of the fork from that step works too);
- the worker learns from the ingest hello where its checkpoints go and, for a fork, which file
  it starts from and the changes to apply there (paths the server makes, never a request's).

Only fields that can change mid-training may change (trainer/checkpoint.py's FORK_FIELDS); the
rest (the model, the data, the optimizer's kind) are a 422 naming the field.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import fields
from pathlib import Path
from typing import Any

from gradwatch import checkpoint
from gradwatch.config import ConfigError, RunConfig, check_field

from .settings import Settings

KNOWN = {f.name for f in fields(RunConfig)}


class ForkRefused(Exception):
    """The fork cannot be made: `status` (409 or 422), `field` for a 422, and the message."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def run_dir(settings: Settings, run_id: str) -> Path:
    return settings.data_dir / "runs" / run_id


def checkpoint_dir(settings: Settings, run_id: str) -> Path:
    return run_dir(settings, run_id) / "checkpoints"


def hello(settings: Settings, run: dict[str, Any], launcher: str = "local") -> dict[str, Any]:
    """What the ingest hello adds for a built-in run's worker: its checkpoint folder and, for a
    fork, the checkpoint to start from and the training changes to make there. Only for workers
    on this machine (the local launcher): the folder is on the server's disk, which a worker on
    a Ray node cannot reach, so such runs keep no checkpoints (a fork of one is a 409)."""
    if run["kind"] != "local" or launcher != "local":
        return {}
    folder = checkpoint_dir(settings, run["id"])
    out: dict[str, Any] = {"checkpoints": str(folder)}
    fork = run.get("fork")
    if fork:
        out["resume"] = str(checkpoint.path_for(folder, fork["step"]))
        out["changes"] = {k: v for k, v in fork["changes"].items() if k in checkpoint.TRAINING_FIELDS}
    return out


def remove(settings: Settings, run_id: str) -> None:
    """A deleted run's checkpoints go with it."""
    shutil.rmtree(run_dir(settings, run_id), ignore_errors=True)


def fork_config(parent: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """The fork's config: the parent's with `changes`, each one checked (ForkRefused 422)."""
    for field, value in changes.items():
        if field not in KNOWN:
            raise ForkRefused(422, "unknown field", field)
        if field not in checkpoint.FORK_FIELDS:
            raise ForkRefused(422, f"a fork cannot change {field}: it changes the model, the data or the "
                              f"optimizer's kind, which the checkpoint fixes (a fork may change "
                              f"{', '.join(checkpoint.FORK_FIELDS)}); start a new run instead", field)
        try:
            check_field(field, value)
        except ConfigError as e:
            raise ForkRefused(422, e.reason, field) from None
    try:
        return RunConfig.from_dict({**parent["config"], **changes}).to_dict()
    except ConfigError as e:
        raise ForkRefused(422, e.reason, e.field) from None


def choose(settings: Settings, parent: dict[str, Any], asked: int, launcher: str = "local") -> int:
    """The parent's newest checkpoint at or before `asked` (ForkRefused 409 when there is none)."""
    if parent["kind"] != "local":
        raise ForkRefused(409, f"run {parent['id']} is the user's own loop: gradwatch keeps no checkpoints of it")
    have = checkpoint.steps(checkpoint_dir(settings, parent["id"]))
    before = [s for s in have if s <= asked]
    if before:
        return before[-1]
    if have:
        raise ForkRefused(409, f"run {parent['id']} has no checkpoint at or before step {asked}; the nearest "
                               f"is at step {have[0]} (checkpoints: steps {', '.join(map(str, have))})")
    every = parent["config"].get("checkpoint_every", 0)
    why = (f"its workers run on the {launcher} launcher, which cannot reach the server's disk" if launcher != "local"
           else "its checkpoint_every is 0" if not every else
           f"it keeps one every {every} steps and has written none yet")
    raise ForkRefused(409, f"run {parent['id']} has no checkpoints: {why}")


def adopt(settings: Settings, parent_id: str, step: int, fork_id: str) -> None:
    """Put the parent's checkpoint at `step` into the fork's folder (a hard link, else a copy)."""
    src = checkpoint.path_for(checkpoint_dir(settings, parent_id), step)
    folder = checkpoint_dir(settings, fork_id)
    folder.mkdir(parents=True, exist_ok=True)
    dst = checkpoint.path_for(folder, step)
    try:
        os.link(src, dst)
    except FileNotFoundError:
        raise ForkRefused(409, f"run {parent_id}'s checkpoint at step {step} was just thinned away; "
                               "ask again (the next one is chosen)") from None
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(src, dst)
