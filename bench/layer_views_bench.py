"""Do the per-layer views stay responsive at 300 parameter tensors? Redraw times of the layer
profiles and the heatmap after each view change, and frame times while a 300-tensor run is live,
in headless Chromium against a real server (issue 18, item 2).

    .venv/bin/python bench/layer_views_bench.py                      # builds its data in a temp dir
    .venv/bin/python bench/layer_views_bench.py --data-dir /tmp/gwlayers   # kept, reused next time

What it sets up (docs/benchmarks.md records a run of it):

- a stored run of 300 tensors x 20,000 steps (20 transformer-like blocks of 15 tensors:
  `blocks.7.attn.q.weight`, ...), written straight into a `gradwatch.server.store.Store`
  before a real server (`python -m gradwatch.server.cli serve`) starts on a copy of it;
- a live run of the same model: an external run fed over the real ingest websocket by
  `gradwatch.worker.IngestClient`, first --backlog steps as fast as the server takes them, then
  LIVE_RATE steps/s while the page is measured (synthetic numbers with the wire format's shape);
- headless Chromium, both runs selected and the live one focused (its heatmap), the viewport as
  tall as the page so that every figure is in view and drawn (figures out of view are not).

What it measures:

- redraw: from `gradwatch.state.set(change)` (what a click on the block switch, the filter box or
  a block's row does) to the three layer profiles and the heatmap all redrawn for it (each
  figure's `draw` timed in the page), for: blocks on (max), a block opened, blocks off (every
  tensor, 300 rows with "weights only" off), a glob filter, the filter cleared. --repeats times
  each, median and max;
- live: requestAnimationFrame intervals over --seconds (p50 / p95 / max) and long tasks, once
  with every tensor drawn (300 rows) and once with a row per block, the live run sending.

Targets (issue 18): < 500 ms per redraw; p95 frame < 50 ms while live.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import frontend_bench as fb  # noqa: E402  (its server, Chromium and measuring helpers)
from gradwatch import events as ev  # noqa: E402
from gradwatch.server.store import Store  # noqa: E402
from gradwatch.worker import IngestClient  # noqa: E402

BLOCKS = 20
STEPS = 20_000
LIVE_RATE = 20  # steps/s of the live run while measured
DATA_VERSION = "1"
MODULES = [("ln_1", "LayerNorm", True), ("attn.q", "Linear", True), ("attn.k", "Linear", True),
           ("attn.v", "Linear", True), ("attn.o", "Linear", True), ("ln_2", "LayerNorm", True),
           ("mlp.fc1", "Linear", True), ("mlp.fc2", "Linear", False)]  # (name, module, has a bias)


def layers() -> list[dict[str, Any]]:
    """300 tensors: 20 blocks x (2 LayerNorms, q/k/v/o, a two-layer MLP without the last bias)."""
    out = []
    for b in range(BLOCKS):
        for name, module, bias in MODULES:
            shape = [64] if module == "LayerNorm" else [64, 64]
            out.append({"name": f"blocks.{b}.{name}.weight", "module": module, "shape": shape})
            if bias:
                out.append({"name": f"blocks.{b}.{name}.bias", "module": module, "shape": [64]})
    assert len(out) == 300
    return out


N = len(layers())


class Synth:
    """Gradient norms shrinking towards the input, a one-step spike in one block now and then."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.depth = np.linspace(0.05, 1.0, N)

    def metrics(self, step: int) -> dict[str, Any]:
        r, t = self.rng, step / 2000
        g = self.depth * (0.6 + 0.8 * r.random(N)) * (0.3 + math.exp(-t))
        if step % 4999 == 0:
            g[150:165] *= 300  # block 10 blows up for a step
        w = 4 + self.depth * 8 + 0.002 * t
        u = 1e-3 * (0.5 + r.random(N)) * (0.2 + math.exp(-t))
        loss = 2.3 * math.exp(-t) + 0.08 + 0.05 * r.standard_normal()
        return ev.metrics({"step": step, "time": time.time(), "loss": loss,
                           "accuracy": min(1.0, 1 - 0.9 * math.exp(-t)),
                           "global_grad_norm": float(np.sqrt((g * g).sum())),
                           "grad_norm": g.tolist(), "weight_norm": w.tolist(), "update_ratio": u.tolist()})


def config() -> dict[str, Any]:
    return {"model": "transformer-like, 300 tensors", "dataset": "synthetic", "steps": 400_000}


def build(data_dir: Path, steps: int = STEPS) -> None:
    marker = data_dir / "bench.json"
    if marker.exists() and json.loads(marker.read_text()) == {"version": DATA_VERSION, "steps": steps}:
        print(f"reusing {data_dir}")
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    store = Store(data_dir / "gradwatch.sqlite3")
    t0 = time.perf_counter()
    run_id = "stored300"
    store.create_run({"id": run_id, "name": "stored-300", "status": "completed", "config": config(),
                      "created": time.time() - 3600, "started": time.time() - 3600, "finished": time.time() - 60,
                      "token": secrets.token_urlsafe(16), "layers": layers(), "kind": "local",
                      "summary": {"step": steps, "diverged_step": None, "diverged_layer": None}})
    synth, batch = Synth(1), []
    for step in range(1, steps + 1):
        batch.append({**synth.metrics(step), "seq": step})
        if len(batch) >= 1000:
            store.append_events(run_id, batch)
            batch = []
    store.append_events(run_id, batch)
    store.close()
    print(f"  stored {steps} steps x {N} tensors ({time.perf_counter() - t0:.0f} s)", flush=True)
    marker.write_text(json.dumps({"version": DATA_VERSION, "steps": steps}))


class Feeder:
    """One external run of the same model over the real ingest websocket."""

    def __init__(self, base: str, client: httpx.Client) -> None:
        r = client.post("/api/runs", json={"name": "live-300", "external": True, "config": config()})
        r.raise_for_status()
        rec = r.json()
        self.id = rec["id"]
        self.http = client
        self.client = IngestClient(base.replace("http://", "ws://") + f"/api/ingest/{rec['id']}", rec["token"])
        self.synth, self.step = Synth(2), 0
        self.stop = threading.Event()

    def backlog(self, steps: int) -> None:
        t0 = time.perf_counter()
        self.client.emit(ev.run_started(layers(), "cpu", 10**6, {}))
        for _ in range(steps):
            self.step += 1
            self.client.emit(self.synth.metrics(self.step))
        deadline = time.monotonic() + 900
        while self.client._acked < self.client._seq:  # noqa: SLF001 - the sender's own progress
            if time.monotonic() > deadline or self.client.fatal:
                why = self.http.get(f"/api/runs/{self.id}").json()
                raise RuntimeError(f"the server did not store the backlog: {self.client.fatal or 'timeout'} ({why})")
            time.sleep(0.1)
        print(f"  live run: {steps} steps of backlog stored in {time.perf_counter() - t0:.0f} s", flush=True)

    def live(self) -> None:
        nxt = time.perf_counter()
        while not self.stop.is_set():
            self.step += 1
            self.client.emit(self.synth.metrics(self.step))
            nxt += 1 / LIVE_RATE
            time.sleep(max(0.0, nxt - time.perf_counter()))

    def finish(self) -> None:
        self.stop.set()
        self.client.emit(ev.run_finished("stopped", "benchmark over", {"step": self.step}))
        self.client.close(timeout=10)


# Each layer figure's draw, timed in the page: the draws that changed what the figure shows
# (a draw that finds nothing new returns at once and is not counted).
TIME_DRAWS_JS = """() => {
  const c = gradwatch.charts;
  for (const fig of [...c.profiles, c.heatmap]) {
    if (fig.timed) continue;
    const draw = fig.draw.bind(fig);
    fig.timed = [];
    fig.draw = (runs, view) => {
      const before = fig.key, t0 = performance.now();
      draw(runs, view);
      if (fig.key !== before) fig.timed.push({ start: t0, end: performance.now(), view: JSON.stringify(
        [view.agg, view.filter, view.layers, view.open]) });
    };
  }
}"""

# Set a view, then wait for every layer figure's first draw of it: [total ms, each draw's ms].
REDRAW_JS = """async (patch) => {
  const c = gradwatch.charts;
  const figs = [...c.profiles, c.heatmap];
  const t0 = performance.now();
  gradwatch.state.set(patch);
  const v = c.view;
  const want = JSON.stringify([v.agg, v.filter, v.layers, v.open]);
  const drawn = f => f.timed.find(d => d.start >= t0 && d.view === want);
  const deadline = t0 + 30000;
  while (!figs.every(drawn)) {
    if (performance.now() > deadline) throw new Error('not redrawn within 30 s: ' + want);
    await new Promise(r => requestAnimationFrame(r));
  }
  const ds = figs.map(drawn);
  for (const f of figs) f.timed = [];
  return { total: Math.max(...ds.map(d => d.end)) - t0, draws: ds.map(d => d.end - d.start),
           rows: document.getElementById('chart-heatmap').data[0]?.y?.length ?? 0 };
}"""

CHANGES = [  # (what, state patch), in this order, from every tensor with "weights only" off
    ("blocks on (max per block)", {"agg": "max"}),
    ("a block opened", {"open": ["blocks.7"]}),
    ("median per block", {"agg": "median"}),
    ("blocks off: every tensor", {"agg": "none", "open": []}),
    ("filter blocks.1?.* (glob)", {"filter": "blocks.1?.*"}),
    ("filter cleared", {"filter": ""}),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, help="where to build (and keep) the stored run")
    ap.add_argument("--steps", type=int, default=STEPS, help="steps of the stored run")
    ap.add_argument("--backlog", type=int, default=STEPS, help="steps the live run sends before it is measured")
    ap.add_argument("--seconds", type=float, default=15, help="how long to measure frames while live, per view")
    ap.add_argument("--repeats", type=int, default=3, help="times each view change is timed")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gwlayers-")
        args.data_dir = Path(tmp.name) / "data"
    print(f"building 1 x {args.steps} steps x {N} tensors in {args.data_dir}", flush=True)
    build(args.data_dir, args.steps)
    try:
        with fb.served(args.data_dir) as (base, _token, client):
            feeder = Feeder(base, client)
            try:
                feeder.backlog(args.backlog)
                threading.Thread(target=feeder.live, daemon=True).start()
                result = measure(args, base, client, feeder)
            finally:
                feeder.finish()
    finally:
        if tmp:
            tmp.cleanup()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def measure(args: argparse.Namespace, base: str, client: httpx.Client, feeder: Feeder) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    stored = next(r["id"] for r in client.get("/api/runs").json() if r["name"] == "stored-300")
    out: dict[str, Any] = {"machine": fb.machine(), "python": platform.python_version(), "backlog": args.backlog,
                           "steps": args.steps}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=fb.CHROMIUM_ARGS)
        out["chromium"] = browser.version
        page = browser.new_page(viewport={"width": 1400, "height": 1250}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(120_000)
        link = client.post("/api/login/links").json()["url"]
        page.goto(f"{base}{link}&runs={stored},{feeder.id}&focus={feeder.id}&layers=all")
        page.wait_for_function("document.querySelector('#conn')?.textContent === 'live'")
        # Every figure in view (figures out of view are not drawn at all).
        page.set_viewport_size({"width": 1400, "height": page.evaluate("document.documentElement.scrollHeight")})
        page.wait_for_function("(document.getElementById('chart-heatmap').data[0]?.y?.length ?? 0) === 300")
        page.wait_for_timeout(2000)
        page.evaluate(TIME_DRAWS_JS)
        redraws: dict[str, list[dict[str, Any]]] = {what: [] for what, _ in CHANGES}
        for _ in range(args.repeats):
            for what, patch in CHANGES:
                redraws[what].append(page.evaluate(REDRAW_JS, patch))
                page.wait_for_timeout(500)
            print("  redraws: " + ", ".join(f"{w} {r[-1]['total']:.0f} ms" for w, r in redraws.items()), flush=True)
        out["redraws"] = redraws
        out["live"] = {}
        for view, patch in [("every tensor (300 rows)", {"agg": "none"}), ("max per block (20 rows)", {"agg": "max"})]:
            page.evaluate("(p) => gradwatch.state.set(p)", patch)
            page.wait_for_timeout(2000)
            load = os.getloadavg()[0]
            live = page.evaluate(fb.MEASURE_JS, args.seconds)
            frames = live["frames"][1:]
            out["live"][view] = {
                "load_1min": [load, os.getloadavg()[0]], "frames": len(frames),
                "frame_ms": {"p50": fb.pct(frames, 50), "p95": fb.pct(frames, 95), "max": max(frames)},
                "over_50ms": sum(f > 50 for f in frames),
                "longtasks": {"count": len(live["longtasks"]), "max_ms": max(live["longtasks"], default=0)},
                "draws_per_s": live["draws"], "draw_cost_ms": live["cost"],
                "live_steps_per_s_received": live["liveStepsPerS"],
            }
            print(f"  live, {view}: p95 frame {out['live'][view]['frame_ms']['p95']:.0f} ms", flush=True)
        out["page_errors"] = errors
        browser.close()
    return out


def report(r: dict[str, Any]) -> None:
    print(f"\nmachine: {r['machine']}; Chromium {r['chromium']}; Python {r['python']}")
    print(f"runs: 300 tensors; one stored ({r['steps']} steps), one live ({r['backlog']} steps of backlog, "
          f"then {LIVE_RATE} steps/s), the live one's heatmap; every figure in view")
    print(f"\nredraw, from the change to the 3 layer profiles and the heatmap redrawn "
          f"(median / max of {len(next(iter(r['redraws'].values())))}; heatmap rows after):")
    for what, rs in r["redraws"].items():
        tot = [x["total"] for x in rs]
        longest = max(max(x["draws"]) for x in rs)
        print(f"  {what:30s} {statistics.median(tot):6.0f} / {max(tot):4.0f} ms   "
              f"(longest single figure {longest:.0f} ms; {rs[-1]['rows']} rows)")
    for view, live in r["live"].items():
        f = live["frame_ms"]
        print(f"\nlive, {view} ({live['live_steps_per_s_received']:.0f} steps/s received), "
              f"load {live['load_1min'][0]:.1f} -> {live['load_1min'][1]:.1f}:")
        print(f"  frame interval  p50 {f['p50']:.1f} ms   p95 {f['p95']:.1f} ms   max {f['max']:.0f} ms   "
              f"({live['frames']} frames, {live['over_50ms']} over 50 ms; "
              f"{live['longtasks']['count']} long tasks, longest {live['longtasks']['max_ms']:.0f} ms)")
        print("  draws/s         " + "  ".join(f"{k} {v:.1f}" for k, v in live["draws_per_s"].items() if v))
        print("  draw cost ms    " + "  ".join(f"{k} {v:.1f}" for k, v in live["draw_cost_ms"].items() if v))
    if r["page_errors"]:
        print(f"\npage errors: {r['page_errors']}")


if __name__ == "__main__":
    sys.exit(main())
