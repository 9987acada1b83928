"""A model with hundreds of parameter tensors (issue 18): a worker's backlog of such steps reaches
the server whole. 512 metrics events of 300 tensors are ~6 MB, over the server's 4 MiB per
message; the ingest client sends them in smaller messages rather than have its run failed."""

from __future__ import annotations

import time

from gradwatch import events as ev
from gradwatch.worker import MAX_BATCH, IngestClient

from .conftest import LiveServer, wait_for

TENSORS = 300


def test_a_300_tensor_backlog_is_sent_in_messages_the_server_takes(live_server: LiveServer) -> None:
    r = live_server.client.post("/api/runs", json={"name": "wide", "external": True, "config": {}})
    assert r.status_code == 201, r.text
    run_id = r.json()["id"]
    client = IngestClient(live_server.ws_url(f"/api/ingest/{run_id}"), r.json()["token"])
    layers = [{"name": f"blocks.{i // 15}.t{i % 15}.weight", "module": "Linear", "shape": [64, 64]}
              for i in range(TENSORS)]
    client.emit(ev.run_started(layers, "cpu", 10**6, {}))
    steps = MAX_BATCH + 88  # more than one full batch pending at once
    values = [0.123456789 + i * 1e-7 for i in range(TENSORS)]  # ~18 characters each on the wire
    for step in range(1, steps + 1):
        client.emit(ev.metrics({"step": step, "time": time.time(), "loss": 1.0, "grad_norm": values,
                                "weight_norm": values, "update_ratio": values}))
    try:
        wait_for(lambda: client._acked >= client._seq or client.fatal, timeout=60,  # noqa: SLF001
                 what="the backlog to be acknowledged")
        assert client.fatal is None
        run = live_server.run(run_id)
        assert run["status"] != "failed", run.get("error")
        assert run["summary"]["step"] == steps
    finally:
        client.emit(ev.run_finished("completed", None, {"step": steps}))
        client.close(timeout=10)
