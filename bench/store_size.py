"""Bytes on disk of a run's stored history, against the raw float32 size of its per-layer series.

Two runs of real probe output (issue 18's cases), stored through Store.append_many in batches of
64 events, as ingest stores them:

- mlp: the built-in trainer, MLP depth 8 with BatchNorm (26 parameter tensors: 9 weights, the
  output bias, 8 BN weights and biases), digits, 5000 steps, eval every 50, stats every 10;
- own: a person's own loop under watch(), 150 Linear(16, 16) layers with ReLU (300 tensors),
  stats every 10: --own-real steps trained for real (100 by default: a step takes ~0.1-0.25 s on
  the shared 2-core VM), their metrics events then repeated, step and time renumbered, up to
  3000 steps (the values' JSON lengths, which the old format's size depends on, are real ones).

The events are made first (training is not timed), then stored and timed; the store is closed
normally (its last connection's close checkpoints the WAL into the file and removes it; no
VACUUM) and the file measured, with each table's share from SQLite's dbstat. The full replay
(every event's JSON, as /api/stream?since=0 sends it) is timed before the close; after it, the
events rows are made whole again, as schema version 3 kept them, and the time to open that
store (migrating it) is measured. Raw size: steps x tensors x the per-step per-layer series
the store keeps (3 before issue 17's grad_weight_ratio: grad_norm, weight_norm, update_ratio;
4 since) x 4 bytes.

    .venv/bin/python bench/store_size.py [--mlp-steps 5000] [--own-steps 3000] [--events DIR]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import torch
from gradwatch import events
from gradwatch.config import RunConfig
from gradwatch.loop import train
from gradwatch.probe import watch
from gradwatch.server.store import SCHEMA_VERSION, SERIES_LAYERS, Store, token_digest
from torch import nn


def mlp_events(steps: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cfg = RunConfig(dataset="digits", model="mlp", depth=8, batchnorm=True, steps=steps, eval_every=50,
                    stats_every=10, checkpoint_every=0, device="cpu")
    train(cfg, out.append)
    return out


def own_events(steps: int, real: int, n_layers: int = 150) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    blocks: list[nn.Module] = []
    for _ in range(n_layers):
        blocks += [nn.Linear(16, 16), nn.ReLU()]
    model = nn.Sequential(*blocks)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    out: list[dict[str, Any]] = []
    probe = watch(model, opt, on_step=lambda rec: out.append(events.metrics(rec)), stats_every=10)
    out.append(events.run_started(probe.layers, "cpu", sum(p.numel() for p in model.parameters()), {"lr": 0.01}))
    x, y = torch.randn(32, 16), torch.randn(32, 16)
    for _ in range(min(steps, real)):
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        probe.record(loss)
        opt.step()
    probe.close()
    made = out[1:]
    for i in range(len(made), steps):
        e = dict(made[i % len(made)])
        e["step"], e["time"] = i + 1, made[-1]["time"] + i
        out.append(e)
    out.append(events.run_finished("completed", None, {}))
    return out


def measure(name: str, evs: list[dict[str, Any]], n_tensors: int) -> dict[str, Any]:
    for seq, e in enumerate(evs, start=1):
        e["seq"] = seq
    assert len(evs[0]["layers"]) == n_tensors, (name, len(evs[0]["layers"]))
    steps = sum(1 for e in evs if e["type"] == "metrics")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gradwatch.db"
        store = Store(path)
        store.create_run({"id": "r0123456789a", "name": name, "status": "running", "config": {},
                          "created": time.time(), "token": token_digest("x")})
        t0 = time.perf_counter()
        for i in range(0, len(evs), 64):
            store.append_many([("r0123456789a", evs[i : i + 64])])
        store_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        texts = store.events_json("r0123456789a")
        replay_s = time.perf_counter() - t0
        assert len(texts) == len(evs)
        store.close()
        size = path.stat().st_size
        db = sqlite3.connect(path)
        tables = dict(db.execute("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC"))
        migrate_s = None
        if SCHEMA_VERSION > 3:  # the same store as version 3 kept it (events whole), migrated to this one
            db.executemany("UPDATE events SET data = ? WHERE run_id = 'r0123456789a' AND seq = ?",
                           [(t, e["seq"]) for t, e in zip(texts, evs, strict=True)])
            db.execute("PRAGMA user_version = 3")
            db.commit()
            db.close()
            t0 = time.perf_counter()
            store = Store(path)
            migrate_s = time.perf_counter() - t0
            assert store.events_json("r0123456789a") == texts
            store.close()
        else:
            db.close()
    raw = steps * n_tensors * len(SERIES_LAYERS) * 4  # every per-step per-layer series the store keeps
    return {"name": name, "steps": steps, "tensors": n_tensors, "events": len(evs), "bytes": size, "raw": raw,
            "ratio": size / raw, "per_step_per_tensor": size / steps / n_tensors, "store_s": store_s,
            "events_per_s": len(evs) / store_s, "replay_s": replay_s, "tables": tables, "migrate_s": migrate_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mlp-steps", type=int, default=5000)
    ap.add_argument("--own-steps", type=int, default=3000)
    ap.add_argument("--own-real", type=int, default=100, help="steps of the own loop trained for real")
    ap.add_argument("--events", type=Path, help="a folder for the made events: read from there when they "
                    "are there (so that two versions of the store can be measured on the same events)")
    args = ap.parse_args()
    for name, n in (("mlp", 26), ("own", 300)):
        t0 = time.perf_counter()
        cache = args.events / f"{name}.jsonl" if args.events else None
        if cache is not None and cache.exists():
            evs = [orjson.loads(line) for line in cache.read_bytes().splitlines()]
        else:
            evs = mlp_events(args.mlp_steps) if name == "mlp" else own_events(args.own_steps, args.own_real)
            evs = [orjson.loads(orjson.dumps(e)) for e in evs]  # as they come off the wire
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                cache.write_bytes(b"\n".join(orjson.dumps(e) for e in evs))
        made = time.perf_counter() - t0
        r = measure(name, evs, n)
        print(f"{name}: {r['tensors']} tensors x {r['steps']} steps ({r['events']} events, made in {made:.0f} s): "
              f"{r['bytes'] / 1e6:.2f} MB on disk for {r['raw'] / 1e6:.2f} MB raw float32 series = "
              f"{r['ratio']:.2f}x, {r['per_step_per_tensor']:.1f} B per step per tensor; stored in "
              f"{r['store_s']:.2f} s ({r['events_per_s']:.0f} events/s), full replay read in {r['replay_s']:.2f} s")
        print("   tables: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in r["tables"].items() if v >= 5000))
        if r["migrate_s"] is not None:
            print(f"   the same store as schema version 3 kept it, opened (migrated): {r['migrate_s']:.2f} s")


if __name__ == "__main__":
    main()
