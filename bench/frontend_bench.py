"""Is the dashboard smooth with many long runs, some of them live? Frame times, long tasks and
the time to load and draw a 100k-step run's history, in headless Chromium against a real server.

    .venv/bin/python bench/frontend_bench.py                  # builds its data in a temp dir
    .venv/bin/python bench/frontend_bench.py --data-dir /tmp/gwbench   # kept, reused next time

What it sets up (docs/benchmarks.md records a run of it):

- a data dir holding 4 finished runs x 50 layers x 20,000 steps and one of 100,000 steps, written
  straight into a `gradwatch.server.store.Store` before the server starts;
- a real server (`python -m gradwatch.server.cli serve`) on that dir;
- 4 live runs: external runs (`POST /api/runs {"external": true}`) fed over the real ingest
  websocket by `gradwatch.worker.IngestClient`: first 20,000 steps of history as fast as the server
  takes them, then 60 steps/s each while the page is measured (synthetic numbers; a run of the
  probe would send the same shape). So 8 runs x 50 layers x 20,000 steps, 4 of them live;
- headless Chromium with those 8 runs selected (one of the live ones focused: its heatmap and
  details), 1400 x 1250.

What it measures:

- live: requestAnimationFrame intervals over 15 s (p50 / p95 / max), long tasks
  (PerformanceObserver 'longtask', > 50 ms), live metrics messages received per second, and how
  often each figure drew (the page's own `gradwatch.charts` clock);
- history: from ticking the 100k-step run in the runs list to its line charts drawn
  (`gradwatch.charts.firstDrawn`), with the /metrics request's share (Resource Timing); then,
  scrolled down to the heatmap, from focusing the run to its heatmap drawn. Three times, median.

Targets (issue 4): p95 frame time < 50 ms while live; the 100k-step history drawn within 500 ms.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gradwatch import events as ev  # noqa: E402
from gradwatch.server.store import Store  # noqa: E402
from gradwatch.worker import IngestClient  # noqa: E402

N_LAYERS = 50
STEPS = 20_000
BIG_STEPS = 100_000
STORED, LIVE = 4, 4
LIVE_RATE = 60  # steps/s per live run
MEASURE_S = 15
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
DATA_VERSION = "2"  # bump when the generated data changes shape (2: `stats` every 10 steps)
STATS_EVERY = 10
N_ACT = 24  # hidden activations (and BatchNorms) of the configs below


def layers() -> list[dict[str, Any]]:
    """50 parameters: 25 Linear layers' weight and bias, in forward order."""
    out = []
    for i in range(N_LAYERS // 2):
        out += [{"name": f"net.{i}.weight", "module": "Linear", "shape": [128, 128]},
                {"name": f"net.{i}.bias", "module": "Linear", "shape": [128]}]
    return out


class Synth:
    """Plausible training numbers: loss falling with noise, gradient norms shrinking towards the
    input (vanishing), a one-step spike now and then with its alert."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.depth = np.linspace(1.0, 0.05, N_LAYERS)
        self.seed = seed

    def metrics(self, step: int) -> dict[str, Any]:
        r = self.rng
        t = step / 2000
        g = self.depth * (0.6 + 0.8 * r.random(N_LAYERS)) * (0.3 + math.exp(-t))
        if step % 4999 == 0:
            g[3] *= 400  # a one-step spike
        w = self.depth * 12 + 0.002 * t * (1 + self.seed % 3)
        u = 1e-3 * (0.5 + r.random(N_LAYERS)) * (0.2 + math.exp(-t))
        loss = 2.3 * math.exp(-t / (1 + self.seed % 4)) + 0.08 + 0.05 * r.standard_normal()
        e = ev.metrics({"step": step, "time": time.time(), "loss": loss,
                        "accuracy": min(1.0, 1 - 0.9 * math.exp(-t) + 0.02 * r.standard_normal()),
                        "global_grad_norm": float(np.sqrt((g * g).sum())),
                        "grad_norm": g.tolist(), "weight_norm": w.tolist(), "update_ratio": u.tolist()})
        if step % 200 == 0:
            e["val_loss"], e["val_accuracy"] = loss, min(1.0, 1 - 0.9 * math.exp(-t))
        if step == 1 or step % STATS_EVERY == 0:  # as the probe sends them (24 hidden blocks with BN)
            n = N_ACT
            e["stats"] = {
                "act_layers": [f"act{i + 1}" for i in range(n)], "act_mean": (0.4 + 0.1 * r.random(n)).tolist(),
                "act_std": (0.6 + 0.1 * r.random(n)).tolist(), "dead_frac": (0.05 * r.random(n) * t).tolist(),
                "bn_layers": [f"bn{i + 1}" for i in range(n)], "bn_mean_drift": (0.01 * r.random(n)).tolist(),
                "bn_var_drift": (0.01 * r.random(n)).tolist(), "bn_gamma_norm": [11.3] * n,
                "bn_beta_norm": (0.1 * r.random(n)).tolist(), "bn_feeds": [f"fc{i + 1}.weight" for i in range(n)],
                "eff_lr": (0.05 / (w[: n] ** 2)).tolist(),
            }
        return e

    def extra(self, step: int) -> list[dict[str, Any]]:
        """Non-metrics events at this step: an alert on each spike, an L2 change at 7,000."""
        out = []
        if step % 4999 == 0:
            out.append(ev.alert(step, "explosion", "global gradient norm over 10x its running median",
                                value=1.0, median=0.1))
        if step == 7000:
            out.append(ev.intervention(step, "l2", 0.0, 0.001))
        return out


def config(i: int) -> dict[str, Any]:
    return {"dataset": "synthetic", "model": "mlp", "depth": 24, "width": 128, "batchnorm": i % 2 == 1,
            "l2": [0.0, 0.0, 0.01, 0.01][i % 4], "lr": 0.05, "steps": BIG_STEPS}


def build(data_dir: Path) -> None:
    """Write the stored runs straight into the store (the server is not running yet)."""
    marker = data_dir / "bench.json"
    if marker.exists() and json.loads(marker.read_text()).get("version") == DATA_VERSION:
        print(f"reusing {data_dir}")
        return
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    store = Store(data_dir / "gradwatch.sqlite3")
    t0 = time.perf_counter()
    plan = [(f"stored-{i}", STEPS, i) for i in range(STORED)] + [("history-100k", BIG_STEPS, 9)]
    for k, (name, steps, seed) in enumerate(plan):
        run_id = f"{name.replace('-', '')[:8]}{k}"
        store.create_run({"id": run_id, "name": name, "status": "completed", "config": config(seed),
                          "created": time.time() - 3600 + k, "started": time.time() - 3600 + k,
                          "finished": time.time() - 60, "token": secrets.token_urlsafe(16),
                          "layers": layers(), "kind": "local",
                          "summary": {"step": steps, "diverged_step": None, "diverged_layer": None}})
        synth, seq, batch = Synth(seed), 0, []
        for step in range(1, steps + 1):
            for e in [synth.metrics(step), *synth.extra(step)]:
                seq += 1
                batch.append({**e, "seq": seq})
            if len(batch) >= 2000:
                store.append_events(run_id, batch)
                batch = []
        store.append_events(run_id, batch)
        print(f"  stored {name}: {steps} steps ({time.perf_counter() - t0:.0f} s)", flush=True)
    store.close()
    marker.write_text(json.dumps({"version": DATA_VERSION}))


@contextlib.contextmanager
def served(data_dir: Path) -> Iterator[tuple[str, str, httpx.Client]]:
    """A real server (its own process, a new token) on a copy of the stored runs in data_dir, so
    that what a benchmark adds never ends up in the kept data: (base URL, token, a client)."""
    serve_dir = Path(tempfile.mkdtemp(prefix="gwbench-serve-"))
    for f in data_dir.glob("gradwatch.sqlite3*"):
        shutil.copy2(f, serve_dir / f.name)
    port, token = free_port(), secrets.token_urlsafe(16)
    log = open(serve_dir / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port),
                               "--data-dir", str(serve_dir), "--log-level", "warning"],
                              cwd=ROOT, env={**os.environ, "GRADWATCH_TOKEN": token},
                              stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    try:
        for _ in range(300):
            try:
                if client.get("/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield base, token, client
    finally:
        client.close()
        server.terminate()
        server.wait(20)
        log.close()
        shutil.rmtree(serve_dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Feeder:
    """4 external runs over the real ingest websocket: a backlog of STEPS steps, then live."""

    def __init__(self, base: str, client: httpx.Client) -> None:
        self.runs = []
        for i in range(LIVE):
            r = client.post("/api/runs", json={"name": f"live-{i}", "external": True, "config": config(10 + i)})
            r.raise_for_status()
            rec = r.json()
            ws = base.replace("http://", "ws://") + f"/api/ingest/{rec['id']}"
            self.runs.append({"id": rec["id"], "client": IngestClient(ws, rec["token"]), "synth": Synth(10 + i),
                              "step": 0})
        self.stop = threading.Event()
        self.sent_live = 0

    def backlog(self) -> None:
        t0 = time.perf_counter()
        for run in self.runs:
            run["client"].emit(ev.run_started(layers(), "cpu", 400_000, {}))
        for step in range(1, STEPS + 1):
            for run in self.runs:
                run["step"] = step
                for e in [run["synth"].metrics(step), *run["synth"].extra(step)]:
                    run["client"].emit(e)
        deadline = time.monotonic() + 900
        for run in self.runs:  # wait for the server to store all of it
            c = run["client"]
            while c._acked < c._seq:  # noqa: SLF001 - the sender's own progress
                if time.monotonic() > deadline or c.fatal:
                    raise RuntimeError(f"the server did not store the backlog of {run['id']}: {c.fatal or 'timeout'}")
                time.sleep(0.1)
        print(f"  live runs: {STEPS} steps of backlog each stored in {time.perf_counter() - t0:.0f} s", flush=True)

    def live(self) -> None:
        period = 1 / LIVE_RATE
        nxt = time.perf_counter()
        while not self.stop.is_set():
            for run in self.runs:
                run["step"] += 1
                for e in [run["synth"].metrics(run["step"]), *run["synth"].extra(run["step"])]:
                    run["client"].emit(e)
            self.sent_live += 1
            nxt += period
            time.sleep(max(0.0, nxt - time.perf_counter()))

    def finish(self) -> None:
        self.stop.set()
        for run in self.runs:
            run["client"].emit(ev.run_finished("stopped", "benchmark over", {"step": run["step"]}))
            run["client"].close(timeout=10)


# ---- in the page -------------------------------------------------------------------------

MEASURE_JS = """async (seconds) => {
  const frames = [], longtasks = [];
  const obs = new PerformanceObserver(list => { for (const e of list.getEntries()) longtasks.push(e.duration); });
  obs.observe({ type: 'longtask', buffered: false });
  const draws0 = Object.fromEntries(gradwatch.charts.jobs.map(j => [j.name, j.draws || 0]));
  const steps0 = [...gradwatch.series.values()].reduce((n, s) => n + (s.received || 0), 0);
  let last = performance.now();
  const end = last + seconds * 1000;
  await new Promise(done => {
    const tick = now => {
      frames.push(now - last);
      last = now;
      if (now < end) requestAnimationFrame(tick); else done();
    };
    requestAnimationFrame(tick);
  });
  obs.disconnect();
  const draws = Object.fromEntries(gradwatch.charts.jobs.map(j => [j.name, (j.draws - draws0[j.name]) / seconds]));
  const cost = Object.fromEntries(gradwatch.charts.jobs.map(j => [j.name, j.cost]));
  const steps = [...gradwatch.series.values()].reduce((n, s) => n + (s.received || 0), 0) - steps0;
  return { frames, longtasks, draws, cost, liveStepsPerS: steps / seconds };
}"""

SELECT_JS = """(id) => {
  gradwatch.charts.forget(id);
  performance.clearResourceTimings();
  const box = document.querySelector(`#runs tr[data-run-id="${id}"] input.select`);
  const t0 = performance.now();
  box.click();
  return t0;
}"""

DRAWN_JS = """([id, names]) => {
  const d = gradwatch.charts.firstDrawn.get(id);
  return !!d && names.every(n => n in d);
}"""

TIMES_JS = """([id, t0]) => {
  const d = gradwatch.charts.firstDrawn.get(id);
  const res = performance.getEntriesByType('resource').filter(e => e.name.includes(`/api/runs/${id}/`));
  return { drawn: Object.fromEntries(Object.entries(d).map(([k, v]) => [k, v - t0])),
           requests: res.map(e => ({ what: new URL(e.name).pathname.split('/').pop() + new URL(e.name).search,
                                     start: e.startTime - t0, end: e.responseEnd - t0,
                                     server: e.responseStart - e.requestStart, bytes: e.encodedBodySize })) };
}"""


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else float("nan")


def machine() -> str:
    model = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        model = platform.processor() or "?"
    return f"{os.cpu_count()} cores, {model}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, help="where to build (and keep) the stored runs")
    ap.add_argument("--seconds", type=float, default=MEASURE_S, help="how long to measure frames while live")
    ap.add_argument("--repeats", type=int, default=3, help="history loads timed (median reported)")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()

    tmp = None
    if args.data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="gwbench-")
        args.data_dir = Path(tmp.name) / "data"
    print(f"building {STORED} x {STEPS} + 1 x {BIG_STEPS} steps x {N_LAYERS} layers in {args.data_dir}", flush=True)
    build(args.data_dir)
    try:
        with served(args.data_dir) as (base, token, client):
            feeder = Feeder(base, client)
            try:
                feeder.backlog()
                threading.Thread(target=feeder.live, daemon=True).start()
                result = measure(args, base, token, client, feeder)
            finally:
                feeder.finish()
    finally:
        if tmp:
            tmp.cleanup()
    report(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


def measure(args: argparse.Namespace, base: str, token: str, client: httpx.Client, feeder: Feeder) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    runs = {r["name"]: r["id"] for r in client.get("/api/runs").json()}
    eight = [runs[f"stored-{i}"] for i in range(STORED)] + [runs[f"live-{i}"] for i in range(LIVE)]
    focus = runs["live-0"]
    big = runs["history-100k"]
    out: dict[str, Any] = {"machine": machine(), "python": platform.python_version()}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, headless=True, args=CHROMIUM_ARGS)
        out["chromium"] = browser.version
        # bypass_csp: wait_for_function evaluates its text, which the page's script-src 'self' forbids
        page = browser.new_page(viewport={"width": 1400, "height": 1250}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.set_default_timeout(120_000)
        t0 = time.perf_counter()
        link = client.post("/api/login/links").json()["url"]  # a one-time sign-in, as `gradwatch serve` prints
        page.goto(f"{base}{link}&runs={','.join(eight)}&focus={focus}")
        # The sign-in page goes on to the dashboard; `gradwatch` exists once the dashboard's script ran.
        drawn = f"{json.dumps(eight)}.every(id => gradwatch.charts.firstDrawn.get(id)?.loss)"
        page.wait_for_function(f"globalThis.gradwatch && {drawn}")
        out["open_s"] = time.perf_counter() - t0
        print(f"  page open, every run drawn: {out['open_s']:.1f} s", flush=True)
        page.wait_for_timeout(2000)  # past the first draws

        load_before = os.getloadavg()[0]
        live = page.evaluate(MEASURE_JS, args.seconds)
        out["load_1min"] = [load_before, os.getloadavg()[0]]  # this bench's own processes count too
        frames = live["frames"][1:]
        out["live"] = {
            "seconds": args.seconds, "frames": len(frames),
            "frame_ms": {"p50": pct(frames, 50), "p95": pct(frames, 95), "max": max(frames)},
            "over_50ms": sum(f > 50 for f in frames),
            "longtasks": {"count": len(live["longtasks"]), "total_ms": sum(live["longtasks"]),
                          "max_ms": max(live["longtasks"], default=0)},
            "live_steps_per_s_received": live["liveStepsPerS"],
            "draws_per_s": live["draws"], "draw_cost_ms": live["cost"],
        }

        print(f"  live: p95 frame {out['live']['frame_ms']['p95']:.0f} ms", flush=True)
        loads = []
        names = ["loss", "accuracy", "grad-norm"]
        for _ in range(args.repeats):
            t_click = page.evaluate(SELECT_JS, big)
            page.wait_for_function(DRAWN_JS, arg=[big, names])
            print("  history lines drawn", flush=True)
            sel = page.evaluate(TIMES_JS, [big, t_click])
            # Focusing it moves the heatmap (and the details) to it.
            t_focus = page.evaluate("""(id) => {
                document.getElementById('chart-heatmap').scrollIntoView();  // figures out of view wait
                const t = performance.now();
                document.querySelector(`#runs tr[data-run-id="${id}"] button.focus`).click();
                return t;
            }""", big)
            page.wait_for_function(DRAWN_JS, arg=[big, ["heatmap"]])
            heat = page.evaluate(TIMES_JS, [big, t_focus])
            loads.append({"select": sel, "focus": heat})
            print(f"  history: lines {max(sel['drawn'][k] for k in names):.0f} ms, "
                  f"heatmap {heat['drawn']['heatmap']:.0f} ms", flush=True)
            # Back to the 8 runs, the heatmap (still in view) on the focused live run again.
            page.evaluate(f"gradwatch.state.set({{selected: {json.dumps(eight)}, focus: {json.dumps(focus)}}})")
            page.wait_for_function(f"gradwatch.charts.heatmap.key?.startsWith({json.dumps(focus)})")
            page.evaluate("window.scrollTo(0, 0)")
            page.wait_for_timeout(1000)
        out["history"] = loads
        out["page_errors"] = errors
        browser.close()
    out["live_rate_sent"] = LIVE_RATE
    return out


def report(r: dict[str, Any]) -> None:
    live = r["live"]
    f = live["frame_ms"]
    print(f"\nmachine: {r['machine']}; Chromium {r['chromium']}; Python {r['python']}")
    print(f"page open with 8 runs x 20k steps selected: {r['open_s']:.1f} s to every run drawn")
    print(f"1-minute load average around the live window: {r['load_1min'][0]:.1f} -> {r['load_1min'][1]:.1f} "
          "(the server, the feeder and Chromium included)")
    print(f"\nlive ({LIVE} runs at {LIVE_RATE} steps/s each sent, "
          f"{live['live_steps_per_s_received']:.0f} steps/s received by the page), {live['seconds']:.0f} s:")
    print(f"  frame interval  p50 {f['p50']:.1f} ms   p95 {f['p95']:.1f} ms   max {f['max']:.0f} ms   "
          f"({live['frames']} frames, {live['over_50ms']} over 50 ms)")
    lt = live["longtasks"]
    print(f"  long tasks      {lt['count']} ({lt['total_ms']:.0f} ms in all, longest {lt['max_ms']:.0f} ms)")
    print("  draws/s         " + "  ".join(f"{k} {v:.1f}" for k, v in live["draws_per_s"].items()))
    print("  draw cost ms    " + "  ".join(f"{k} {v:.1f}" for k, v in live["draw_cost_ms"].items()))

    def med(key: str, which: str = "select") -> float:
        return statistics.median(h[which]["drawn"][key] for h in r["history"])

    req = [next((q for q in h["select"]["requests"] if q["what"].startswith("metrics")), None) for h in r["history"]]
    req = [q for q in req if q]
    print(f"\n100k-step history (median of {len(r['history'])}), from ticking the run:")
    print(f"  line charts drawn    {max(med('loss'), med('accuracy'), med('grad-norm')):.0f} ms "
          f"(loss {med('loss'):.0f}, accuracy {med('accuracy'):.0f}, grad norm {med('grad-norm'):.0f})")
    if req:
        print(f"  of which /metrics    {statistics.median(q['end'] - q['start'] for q in req):.0f} ms "
              f"(server {statistics.median(q['server'] for q in req):.0f} ms to first byte, "
              f"{statistics.median(q['bytes'] for q in req) / 1e6:.1f} MB, {req[0]['what']})")
    print(f"  heatmap, from focusing it: {med('heatmap', 'focus'):.0f} ms")
    if r["page_errors"]:
        print(f"\npage errors: {r['page_errors']}")


if __name__ == "__main__":
    sys.exit(main())
