"""Live fan-out under load: R runs x C browser clients on this machine.

    .venv/bin/python bench/stream_load.py                        # 4 runs x 20 clients x 50 steps/s, 20 s
    .venv/bin/python bench/stream_load.py --rate 400 --seconds 15  # push the fan-out
    .venv/bin/python bench/stream_load.py --source real          # real training workers instead
    .venv/bin/python bench/stream_load.py --source free --runs 4 --clients 10   # issue 14's case

--source free: N free-running runs of the default size, as the page's "Ablate BN x L2" group
starts them (the default config, BatchNorm off/on x L2 0/0.01, as many steps as they get), and
windows of --seconds each by turns: no client, M clients, no client, ... (--cycles windows with
clients, each between two without). Training steps/s in each window with the clients is compared
with the mean of the two windows beside it (the machine's speed drifts over a minute), and the
median of those ratios reported; the latency is over every clients window. The workers' own
step->send delay is read from their logs when they stop.

A real server (uvicorn, its own process, a token) on a free port. Each run is fed either by a
paced feeder process speaking the ingest protocol through the trainer's own IngestClient (what
every worker and gradwatch.connect use), emitting one `metrics` event per step at --rate steps/s
with --layers per-layer arrays (8, like the default 3-deep MLP: ~1 KiB per event); or, with
--source real, by a real worker training the tiny synthetic MLP as fast as it can. C websocket
clients (asyncio, spread over --client-procs processes) subscribe to every run, as dashboards do.

Reported: worker-step-to-browser latency (receive time minus the event's `time`, taken by the
worker when the step's values were read; one clock, one machine) p50/p99/max over every metrics
event every client got; deliveries/s (messages received by all clients); the server process's
CPU time over the measurement, and deliveries per server CPU-second ("per core"); resyncs (a
client that fell behind). Clients and feeders share the machine's cores with the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

FAST = {"dataset": "synthetic", "depth": 3, "width": 16, "steps": 1_000_000, "eval_every": 0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


# ---- feeders: one process per run --------------------------------------------------------


def feed(url: str, run_id: str, token: str, rate: float, layers: int, stop: mp.Event) -> None:
    from gradwatch.worker import IngestClient

    ws = url.replace("http://", "ws://", 1)
    client = IngestClient(f"{ws}/api/ingest/{run_id}", token)
    assert client.hello_ready.wait(30) and client.hello is not None, client.fatal
    client.emit({"type": "run.started", "time": time.time(), "device": "cpu",
                 "layers": [{"name": f"fc{i}.weight", "module": "Linear", "shape": [16, 16]} for i in range(layers)]})
    t0, step = time.perf_counter(), 0
    while not stop.is_set():
        step += 1
        g = [0.5 + (step * 7 + i) % 13 / 10 for i in range(layers)]
        client.emit({"type": "metrics", "step": step, "time": time.time(), "loss": 1 / step, "accuracy": 0.5,
                     "global_grad_norm": 1.0, "grad_norm": g, "weight_norm": g, "update_ratio": g})
        delay = t0 + step / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    client.emit({"type": "run.finished", "time": time.time(), "status": "completed", "reason": None,
                 "summary": {"step": step}})
    client.close(timeout=30)


# ---- clients: asyncio websockets, several per process ------------------------------------


async def _client(url: str, window: tuple[float, float], out: dict) -> None:
    from websockets.asyncio.client import connect

    async with connect(url, max_size=None, max_queue=None) as ws:
        out["connected"] += 1
        async for raw in ws:
            now = time.time()
            if now > window[1]:
                break
            if now < window[0]:
                continue
            if out["cpu_at_start"] is None:  # the first frame in the window: start-up and connecting done
                out["cpu_at_start"] = time.process_time()
            data = orjson.loads(raw)  # a frame: an array of messages (one object with ?frames=single)
            out["frames"] += 1
            for m in data if isinstance(data, list) else [data]:
                out["messages"] += 1
                if m["type"] == "metrics":
                    out["lags"].append(now - m["time"])
                elif m["type"] == "resync":
                    out["resyncs"] += 1


def clients(url: str, n: int, window: tuple[float, float], results: mp.Queue) -> None:
    out = {"connected": 0, "messages": 0, "frames": 0, "resyncs": 0, "lags": [], "cpu_at_start": None}

    async def main() -> None:
        tasks = [asyncio.create_task(_client(url, window, out)) for _ in range(n)]
        await asyncio.wait(tasks, timeout=window[1] - time.time() + 5)
        for t in tasks:
            t.cancel()

    asyncio.run(main())
    out["cpu_s"] = time.process_time()  # this process's CPU: parsing every frame, as a browser does
    out["window_cpu_s"] = out["cpu_s"] - (out["cpu_at_start"] or out["cpu_s"])  # ...within the window
    results.put(out)


# ---- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict:
    port, token = free_port(), secrets.token_urlsafe(16)
    data = Path(args.data_dir or f"/tmp/gradwatch-bench-{port}")
    env = {**os.environ, "GRADWATCH_TOKEN": token, "GRADWATCH_MAX_CONCURRENT": str(args.runs)}
    server = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port), "--data-dir",
                               str(data), "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    procs: list[mp.Process] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if api.get("/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
            time.sleep(0.1)
        ctx = mp.get_context("spawn")
        results: mp.Queue = ctx.Queue()
        stop = ctx.Event()
        run_ids = []
        for i in range(args.runs):
            if args.source == "real":
                r = api.post("/api/runs", json={"name": f"bench-{i}", "config": FAST})
            else:
                r = api.post("/api/runs", json={"name": f"bench-{i}", "external": True, "config": {}})
            assert r.status_code == 201, r.text
            run_ids.append(r.json()["id"])
            if args.source == "paced":
                procs.append(ctx.Process(target=feed, args=(url, r.json()["id"], r.json()["token"], args.rate,
                                                            args.layers, stop)))
                procs[-1].start()
        deadline = time.monotonic() + 120  # every run streaming before anything is measured
        while not all(api.get(f"/api/runs/{i}").json()["last_seq"] >= 2 for i in run_ids):
            assert time.monotonic() < deadline, "the runs did not start streaming"
            time.sleep(0.2)
        start = time.time() + args.connect_s  # the clients connect, then we measure
        window = (start, start + args.seconds)
        per = [args.clients // args.client_procs + (i < args.clients % args.client_procs)
               for i in range(args.client_procs)]
        for n in per:
            procs.append(ctx.Process(target=clients, args=(f"{url.replace('http', 'ws', 1)}/api/stream?token={token}",
                                                           n, window, results)))
            procs[-1].start()
        time.sleep(max(0.0, start - time.time()))
        cpu0 = cpu_seconds(server.pid)
        time.sleep(max(0.0, window[1] - time.time()))
        cpu1 = cpu_seconds(server.pid)
        outs = [results.get(timeout=60) for _ in per]
        steps = [api.get(f"/api/runs/{i}").json()["summary"].get("step", 0) for i in run_ids]
        stop.set()
        for i in run_ids:
            if args.source == "real":
                api.post(f"/api/runs/{i}/stop")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        api.close()
        server.terminate()
        server.wait(30)
    lags = sorted(x for o in outs for x in o["lags"])
    messages = sum(o["messages"] for o in outs)

    def q(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000 if lags else float("nan")

    cpu = cpu1 - cpu0
    return {
        "source": args.source, "runs": args.runs, "clients": args.clients, "rate": args.rate if args.source == "paced"
        else None, "layers": args.layers, "seconds": args.seconds,
        "connected": sum(o["connected"] for o in outs), "steps_per_run_at_end": steps,
        "metrics_delivered": len(lags), "deliveries_per_s": round(messages / args.seconds),
        "latency_ms": {"p50": round(q(0.50), 1), "p99": round(q(0.99), 1), "max": round(q(1.0), 1)},
        "server_cpu_s": round(cpu, 2), "server_cpu_util": round(cpu / args.seconds, 2),
        "deliveries_per_server_cpu_s": round(messages / cpu) if cpu > 0 else None,
        "resyncs": sum(o["resyncs"] for o in outs),
    }


def start_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str, str, Path, httpx.Client]:
    port, token = free_port(), secrets.token_urlsafe(16)
    data = Path(args.data_dir or f"/tmp/gradwatch-bench-{port}")
    env = {**os.environ, "GRADWATCH_TOKEN": token, "GRADWATCH_MAX_CONCURRENT": str(args.runs)}
    server = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port), "--data-dir",
                               str(data), "--log-level", "warning"], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        try:
            if api.get("/api/health").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and server.poll() is None, "the server did not start"
        time.sleep(0.1)
    return server, url, token, data, api


def run_free(args: argparse.Namespace) -> dict:
    """N free-running default runs; windows: no client, M clients, no client."""
    server, url, token, data, api = start_server(args)
    run_ids: list[str] = []
    procs: list[mp.Process] = []
    outs: list[dict] = []
    try:
        for i in range(args.runs):  # the group's four: BatchNorm off/on x L2 0/0.01
            config = {"steps": 1_000_000, "batchnorm": bool(i & 1), "l2": 0.01 if i & 2 else 0.0}
            r = api.post("/api/runs", json={"name": f"free-{i}", "config": config})
            assert r.status_code == 201, r.text
            run_ids.append(r.json()["id"])
        deadline = time.monotonic() + 120
        while not all(api.get(f"/api/runs/{i}").json()["summary"].get("step", 0) >= 50 for i in run_ids):
            assert time.monotonic() < deadline, "the runs did not start training"
            time.sleep(0.2)

        def window(seconds: float) -> tuple[float, float, int]:
            """(steps/s of all runs, server CPU s, events stored) over `seconds`."""
            def at() -> tuple[int, int, float]:
                runs = [api.get(f"/api/runs/{i}").json() for i in run_ids]
                return (sum(r["summary"].get("step", 0) for r in runs), sum(r["last_seq"] for r in runs),
                        cpu_seconds(server.pid))
            s0, q0, c0 = at()
            t0 = time.monotonic()
            time.sleep(seconds)
            s1, q1, c1 = at()
            return (s1 - s0) / (time.monotonic() - t0), c1 - c0, q1 - q0

        ctx = mp.get_context("spawn")
        results: mp.Queue = ctx.Queue()
        per = [args.clients // args.client_procs + (i < args.clients % args.client_procs)
               for i in range(args.client_procs)]
        per = [n for n in per if n > 0]
        query = f"?token={token}" + ("&frames=single" if args.frames == "single" else "")

        def with_clients() -> tuple[tuple[float, float, int], list[dict]]:
            start = time.time() + args.connect_s
            win = (start, start + args.seconds)
            cycle = []
            for n in per:
                cycle.append(ctx.Process(target=clients, args=(
                    f"{url.replace('http', 'ws', 1)}/api/stream{query}", n, win, results)))
                cycle[-1].start()
            procs.extend(cycle)
            time.sleep(max(0.0, start - time.time()))
            measured = window(args.seconds)
            got = [results.get(timeout=60) for _ in per]
            for p in cycle:
                p.join(timeout=30)
            return measured, got

        # none, clients, none, clients, ..., none: each clients window against the two beside it
        # (the machine's own speed drifts by tens of percent over a minute here).
        alone = [window(args.seconds)]
        watched_all = []
        for _ in range(args.cycles):
            measured, got = with_clients()
            watched_all.append(measured)
            outs.extend(got)
            alone.append(window(args.seconds))
        for i in run_ids:
            api.post(f"/api/runs/{i}/stop")
        deadline = time.monotonic() + 60
        ended = ("stopped", "completed", "failed")
        while any(api.get(f"/api/runs/{i}").json()["status"] not in ended for i in run_ids):
            assert time.monotonic() < deadline, "the runs did not stop"
            time.sleep(0.2)
        time.sleep(1.0)  # the workers' last lines reach their logs
        sends = []
        for i in run_ids:
            log = data / "logs" / f"{i}.log"
            text = log.read_text(errors="replace") if log.exists() else ""
            line = [x for x in text.splitlines() if "step->send delay" in x]
            sends.append(line[-1].split("delay ", 1)[1] if line else "not logged")
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        api.close()
        server.terminate()
        server.wait(30)
    lags = sorted(x for o in outs for x in o["lags"])
    messages = sum(o["messages"] for o in outs)
    frames = sum(o["frames"] for o in outs)

    def q(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))] * 1000 if lags else float("nan")

    ratios = [w[0] / ((a[0] + b[0]) / 2) for w, a, b in zip(watched_all, alone, alone[1:], strict=False)]
    seconds = args.seconds * len(watched_all)
    cpu, events = sum(w[1] for w in watched_all), sum(w[2] for w in watched_all)
    none_cpu, none_events = sum(a[1] for a in alone), sum(a[2] for a in alone)
    return {
        "source": "free", "runs": args.runs, "clients": args.clients, "frames": args.frames, "seconds": args.seconds,
        "connected": sum(o["connected"] for o in outs), "metrics_delivered": len(lags),
        "latency_ms": {"p50": round(q(0.50), 1), "p99": round(q(0.99), 1), "max": round(q(1.0), 1)},
        "deliveries_per_s": round(messages / seconds), "frames_per_s": round(frames / seconds),
        "events_per_s": round(events / seconds),
        "server_cpu_util": round(cpu / seconds, 2),
        "server_cpu_us_per_event": round(cpu / events * 1e6, 1) if events else None,
        "server_cpu_us_per_delivery": round(cpu / messages * 1e6, 1) if messages else None,
        "steps_per_s": {"none": [round(a[0], 1) for a in alone], "clients": [round(w[0], 1) for w in watched_all]},
        "throughput_ratios": [round(r, 3) for r in ratios],
        "throughput_ratio": round(statistics.median(ratios), 3) if ratios else None,
        "server_cpu_us_per_event_no_client": round(none_cpu / none_events * 1e6, 1) if none_events else None,
        "worker_step_to_send": sends, "resyncs": sum(o["resyncs"] for o in outs),
        "clients_cpu_util": round(sum(o.get("cpu_s", 0.0) for o in outs) / seconds, 2),
        "clients_window_cpu_util": round(sum(o.get("window_cpu_s", 0.0) for o in outs) / seconds, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--clients", type=int, default=20, help="browser websockets, each subscribed to every run")
    ap.add_argument("--rate", type=float, default=50.0, help="steps/s per paced run")
    ap.add_argument("--layers", type=int, default=8, help="per-layer array length of a paced run's events")
    ap.add_argument("--seconds", type=float, default=20.0, help="measurement window")
    ap.add_argument("--connect-s", type=float, default=4.0, help="warm-up before the window")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--source", choices=["paced", "real", "free"], default="paced")
    ap.add_argument("--frames", choices=["batch", "single"], default="batch",
                    help="--source free: the stream's framing the clients ask for")
    ap.add_argument("--cycles", type=int, default=3,
                    help="--source free: windows with clients, each between two without")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    if args.source == "free":
        result = run_free(args)
        lat, sps = result["latency_ms"], result["steps_per_s"]
        print(f"{result['runs']} free-running runs x {result['clients']} clients ({args.frames} frames), "
              f"{args.seconds:g} s windows on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
        print(f"  latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
              f"over {result['metrics_delivered']} metrics deliveries")
        print(f"  {result['events_per_s']} events/s in; {result['deliveries_per_s']} deliveries/s in "
              f"{result['frames_per_s']} frames/s; server CPU {result['server_cpu_util'] * 100:.0f}%: "
              f"{result['server_cpu_us_per_event']} us per event, {result['server_cpu_us_per_delivery']} us per "
              f"delivery ({result['server_cpu_us_per_event_no_client']} us per event with no client)")
        print(f"  training steps/s without / with clients by turns: {sps['none']} / {sps['clients']}: ratio per "
              f"cycle {result['throughput_ratios']}, median {result['throughput_ratio']}; resyncs {result['resyncs']}")
        print(f"  worker step->send: {'; '.join(result['worker_step_to_send'])}")
        print(f"  the clients' processes used {result['clients_window_cpu_util'] * 100:.0f}% of a core in the "
              f"windows ({result['clients_cpu_util'] * 100:.0f}% with their start-up and connecting)")
        print(json.dumps(result))
        return
    result = run(args)
    lat = result["latency_ms"]
    print(f"{result['runs']} runs x {result['clients']} clients, {args.source}"
          + (f" at {args.rate:g} steps/s, {args.layers} layers" if args.source == "paced" else "")
          + f", {args.seconds:g} s on {os.cpu_count()} cores")
    print(f"  latency p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms "
          f"over {result['metrics_delivered']} metrics deliveries")
    print(f"  {result['deliveries_per_s']} deliveries/s; server CPU {result['server_cpu_util'] * 100:.0f}% "
          f"-> {result['deliveries_per_server_cpu_s']} deliveries per server CPU-second; "
          f"resyncs {result['resyncs']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
