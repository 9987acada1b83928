"""One tiny real run in this process (tinygrad's `STEPS=10` habit): the built-in trainer's events,
numbered as the worker's sender numbers them, pass the server's ingest checks (server/wire.py)
with no server and no worker. Not in the fast layer (tests/fast): torch's import alone takes
3-15 s on the shared 2-core machine, a quarter of that layer's minute; here torch is imported
already by the trainer's other tests."""

from __future__ import annotations

from typing import Any

from gradwatch.config import RunConfig
from gradwatch.loop import train
from gradwatch.server.wire import Checker


def test_a_tiny_run_emits_what_the_servers_ingest_accepts(one_thread: None) -> None:
    events: list[dict[str, Any]] = []
    summary = train(RunConfig(dataset="synthetic", depth=2, width=16, batchnorm=True, steps=12, eval_every=6,
                              batch_size=32), events.append)
    for seq, e in enumerate(events, start=1):
        e["seq"] = seq  # as IngestClient numbers them
    Checker("tiny", None, 0).check(events)  # raises BadEvent on anything a worker may not send
    kinds = [e["type"] for e in events]
    assert kinds[0] == "run.started" and kinds[-1] == "run.finished" and events[-1]["status"] == "completed"
    layers = [layer["name"] for layer in events[0]["layers"]]
    assert "bn1.weight" in layers
    steps = [e for e in events if e["type"] == "metrics"]
    assert [m["step"] for m in steps] == list(range(1, 13))
    assert all(len(m["grad_norm"]) == len(layers) and all(g > 0 for g in m["grad_norm"]) for m in steps)
    assert summary["status"] == "completed" and summary["step"] == 12
