"""Does one person opening a big history hold up everyone else? The server's answer time to a tiny
request while big reads run.

    .venv/bin/python bench/loop_stall.py --data-dir /tmp/gwbench   # the frontend benchmark's data, kept

A real server (its own process, a token) on a copy of bench/frontend_bench.py's stored runs (8
runs x 20k steps and one of 100k, 50 layers). A prober asks `GET /api/health` every 20 ms and
times each answer; everything else the server does (live fan-out, ingest acks) waits on the
same event loop, so the prober's wait is theirs. Two phases of --seconds each: idle, then
while a loader (another process), one request at a time, asks for what a person opening those runs asks for: the
100k-step run's `/metrics` (2,000 points, as the page asks) and its heatmap, and a 20k-step run's
CSV export. Reported: the prober's p50 / p99 / max in each phase, and each kind of big read's
median time.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from frontend_bench import BIG_STEPS, build, machine, served  # noqa: E402

READS = {
    "metrics-100k": "/api/runs/{big}/metrics?max_points=2000&stats=eff_lr,dead_frac",
    "heatmap-100k": "/api/runs/{big}/heatmap?stat=grad_norm&max_points=500",
    "csv-20k": "/api/runs/{small}/export?format=csv",
}


def probe(base: str, token: str, seconds: float, out: list[float]) -> None:
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30) as c:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            c.get("/api/health").raise_for_status()
            out.append(time.perf_counter() - t0)
            time.sleep(max(0.0, 0.02 - (time.perf_counter() - t0)))


def load(base: str, token: str, paths: dict[str, str], stop: Any, out: Any) -> None:
    """In its own process: reading 36 MB of CSV through httpx is Python work, which in the
    prober's process would hold up the prober rather than the server."""
    took: dict[str, list[float]] = {k: [] for k in paths}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        while not stop.is_set():
            for name, path in paths.items():
                t0 = time.perf_counter()
                c.get(path).raise_for_status()  # the body is read, not parsed
                took[name].append(time.perf_counter() - t0)
                if stop.is_set():
                    break
    out.put(took)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def line(name: str, xs: list[float]) -> str:
    return (f"  {name:<28} n={len(xs):>4}  p50 {pct(xs, 50) * 1e3:7.1f} ms  p99 {pct(xs, 99) * 1e3:7.1f} ms"
            f"  max {max(xs) * 1e3:7.1f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, help="where to build (and keep) the stored runs")
    ap.add_argument("--seconds", type=float, default=15.0, help="length of each phase")
    ap.add_argument("--reads", default=",".join(READS), help=f"which big reads, of {', '.join(READS)}")
    args = ap.parse_args()
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gwbench-")
        args.data_dir = Path(tmp.name) / "data"
    build(args.data_dir)
    try:
        with served(args.data_dir) as (base, token, client):
            runs = client.get("/api/runs").json()
            big = next(r["id"] for r in runs if r["summary"].get("step") == BIG_STEPS)
            small = next(r["id"] for r in runs if r["id"] != big)
            paths = {k: READS[k].format(big=big, small=small) for k in args.reads.split(",")}
            idle: list[float] = []
            probe(base, token, args.seconds, idle)
            loaded: list[float] = []
            ctx = mp.get_context("spawn")
            stop, results = ctx.Event(), ctx.Queue()
            loader = ctx.Process(target=load, args=(base, token, paths, stop, results))
            loader.start()
            try:
                probe(base, token, args.seconds, loaded)
            finally:
                stop.set()
                took = results.get(timeout=300)
                loader.join()
    finally:
        if tmp:
            tmp.cleanup()
    print(f"\nmachine: {machine()}, python {sys.version.split()[0]}")
    print("GET /api/health, every 20 ms:")
    print(line("idle", idle))
    print(line("while big reads run", loaded))
    print("big reads, one at a time:")
    for name, xs in took.items():
        print(f"  {name:<28} n={len(xs):>4}  median {statistics.median(xs) * 1e3:7.1f} ms" if xs else f"  {name}: none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
