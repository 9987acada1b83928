"""What do checkpoints cost a run, and how soon does a fork train? (issue 16)

    .venv/bin/python bench/checkpoint_cost.py              # CPU: both parts, the figures in docs/benchmarks.md
    .venv/bin/python bench/checkpoint_cost.py --part cost --device cuda

cost: the default MLP (500 steps) and the 20-block CNN (50 steps), digits, batch 64, each trained
      with checkpoints every 10 steps (the default checkpoint_every) and without, alternately,
      --repeats times. Reported per step (medians): the time the training thread spent on
      checkpoints (copying the state, waiting for the previous write: train()'s
      `checkpoint_seconds`), and with vs without checkpoints the training thread's CPU time, the
      whole process's CPU time (the background writer's torch.save, sha256, fsync and rename
      included) and the wall time (noisy on a shared machine).
parts: the same two models, the checkpoint's own operations timed alone (CPU time: a shared machine's
      load does not inflate it) against a training step's CPU time: the copy the training thread
      makes, the writer's serialise + sha256 + write + fsync + rename, and a read back with its check.
fork: a real server (`gradwatch serve`, prefork on, as by default), one completed 200-step MLP run;
      then --forks times: POST /api/runs/{id}/fork at step 100, and the time until the fork's first
      step is stored (its run record's summary.step, polled every 10 ms).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from gradwatch.config import RunConfig
from gradwatch.loop import train

# label: (config, steps): the CNN is ~0.3 s a step on one CPU thread, so fewer of its steps.
MODELS = {"mlp (default: 4 x 64)": ({}, 500), "cnn (20 blocks x 64)": ({"model": "cnn", "depth": 20, "width": 64}, 50)}


def timed(cfg: RunConfig, folder: str | None) -> tuple[float, float, float, dict]:
    """(wall, training thread CPU, process CPU) seconds of one run, and its summary. On a shared
    machine the CPU times are what this run did, whatever else the cores were doing."""
    w, t, p = time.perf_counter(), time.thread_time(), time.process_time()
    summary = train(cfg, lambda e: None, checkpoints=folder)
    return time.perf_counter() - w, time.thread_time() - t, time.process_time() - p, summary


def cost(device: str, repeats: int) -> None:
    print(f"checkpoint cost: checkpoint_every 10 (the default), {repeats} repeats, device {device}, "
          f"torch threads {torch.get_num_threads()}")
    for label, (extra, steps) in MODELS.items():
        base = {"steps": steps, "eval_every": 0, "device": device, **extra}
        timed(RunConfig(**{**base, "steps": 20}, checkpoint_every=0), None)  # imports, data, allocator: not counted
        on: list[tuple] = []
        off: list[tuple] = []
        size = 0
        for _ in range(repeats):
            with tempfile.TemporaryDirectory() as d:
                on.append(timed(RunConfig(**base, checkpoint_every=10), d))
                size = max(p.stat().st_size for p in Path(d).iterdir())
            off.append(timed(RunConfig(**base, checkpoint_every=0), None))
        def ms(runs: list[tuple], k: int, steps: int = steps) -> float:
            return statistics.median(r[k] for r in runs) / steps * 1e3

        held = statistics.median(r[3]["checkpoint_seconds"] for r in on) / steps * 1e3
        print(f"  {label}, {steps} steps: checkpoint {size / 2**20:.2f} MiB every 10 steps")
        print(f"    training thread held up by checkpoints (copies + waits, wall): {held:.3f} ms/step")
        for k, what in ((1, "training thread CPU"), (2, "process CPU (with the writer thread)"), (0, "wall")):
            a, b = ms(on, k), ms(off, k)
            print(f"    {what}: {b:.3f} -> {a:.3f} ms/step ({(a / b - 1) * 100:+.1f}%)")


def parts(device: str, repeats: int) -> None:
    """The checkpoint's own operations, timed alone on a model that has trained 3 steps (momentum
    buffers exist), against the CPU time of a training step: fast to run however slow the model."""

    print(f"checkpoint parts: {repeats} of each, device {device}, torch threads {torch.get_num_threads()}")
    for label, (extra, _) in MODELS.items():
        _parts_of(label, extra, device, repeats)


def _parts_of(label: str, extra: dict, device: str, repeats: int) -> None:
    from gradwatch import checkpoint, models, optim
    from gradwatch import data as data_mod
    from gradwatch.diagnosis import Diagnosis
    from gradwatch.loop import snapshot
    from gradwatch.probe import watch

    cfg = RunConfig(device=device, **extra)
    dev = torch.device(device)
    ds = data_mod.load(cfg.dataset, dev, None, cfg.seed)
    model = models.build(cfg, ds.shape, ds.n_classes).to(dev)
    opt = optim.build(model, cfg)
    batches = data_mod.Batches(len(ds.x_train), cfg.batch_size, cfg.seed, dev)
    probe = watch(model, opt, stats_every=cfg.stats_every)
    live = {"l2": cfg.l2, "lr": cfg.lr, "grad_clip": cfg.grad_clip}

    def step() -> None:
        idx = batches.next()
        loss = torch.nn.functional.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        probe.record(loss)
        opt.step()

    for _ in range(3):
        step()
    t = time.thread_time()
    for _ in range(repeats):
        step()
    step_ms = (time.thread_time() - t) / repeats * 1e3
    t = time.thread_time()
    for _ in range(repeats):
        state = snapshot(10, cfg, model, opt, batches, live, probe, Diagnosis(probe.names))
    copy_ms = (time.thread_time() - t) / repeats * 1e3
    with tempfile.TemporaryDirectory() as d:
        t, w = time.thread_time(), time.perf_counter()
        for i in range(repeats):
            size = checkpoint.write(checkpoint.path_for(d, i), state)
        write_cpu, write_wall = ((time.thread_time() - t) / repeats * 1e3, (time.perf_counter() - w) / repeats * 1e3)
        t = time.thread_time()
        for i in range(repeats):
            checkpoint.load(checkpoint.path_for(d, i))
        load_ms = (time.thread_time() - t) / repeats * 1e3
    probe.close()
    print(f"  {label}: a training step {step_ms:.2f} ms CPU; a checkpoint {size / 2**20:.2f} MiB: copy on the "
          f"training thread {copy_ms:.2f} ms CPU ({copy_ms / 10 / step_ms * 100:.2f}% of a step's CPU at "
          f"checkpoint_every 10), write on the writer thread {write_cpu:.2f} ms CPU, {write_wall:.1f} ms wall "
          f"with fsync ({write_cpu / 10 / step_ms * 100:.1f}% more CPU per step); read back and checked "
          f"{load_ms:.2f} ms")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fork_latency(forks: int) -> None:
    import httpx

    port, token = free_port(), secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory() as d:
        env = {**os.environ, "GRADWATCH_TOKEN": token}
        proc = subprocess.Popen([sys.executable, "-m", "gradwatch.server.cli", "serve", "--port", str(port),
                                 "--data-dir", d, "--log-level", "warning"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                              timeout=30)
        try:
            wait(lambda: _up(client), 60)
            parent = client.post("/api/runs", json={"config": {"steps": 200, "device": "cpu"}}).json()
            wait(lambda: client.get(f"/api/runs/{parent['id']}").json()["status"] == "completed", 120)
            times: dict[str, list[float]] = {"fork": [], "new run": []}
            for _ in range(forks):  # alternately: a fork at step 100, and a new run of the same config
                for kind, path, body in (
                        ("fork", f"/api/runs/{parent['id']}/fork", {"step": 100, "changes": {"lr": 0.01}}),
                        ("new run", "/api/runs", {"config": {"steps": 100, "device": "cpu", "lr": 0.01}})):
                    t = time.perf_counter()
                    r = client.post(path, json=body)
                    assert r.status_code == 201, r.text
                    rid = r.json()["id"]
                    def stepped(rid: str = rid) -> bool:
                        return bool((client.get(f"/api/runs/{rid}").json()["summary"] or {}).get("step"))

                    wait(stepped, 120, 0.01)
                    times[kind].append(time.perf_counter() - t)
                    wait(lambda rid=rid: client.get(f"/api/runs/{rid}").json()["status"] == "completed", 120)
            for kind, ts in times.items():
                print(f"{kind}: request -> first step stored: median {statistics.median(ts) * 1e3:.0f} ms, "
                      f"min {min(ts) * 1e3:.0f}, max {max(ts) * 1e3:.0f} over {forks}")
        finally:
            client.close()
            proc.terminate()
            proc.wait(20)


def _up(client: object) -> bool:
    try:
        return client.get("/api/health").status_code == 200  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def wait(pred: object, timeout: float, interval: float = 0.05) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise TimeoutError("gave up waiting")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["cost", "parts", "fork", "both"], default="both",
                    help="both: parts and fork (cost, whole runs with and without, takes long for the CNN)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--forks", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    if args.part == "cost":
        cost(args.device, args.repeats)
    if args.part in ("parts", "both"):
        parts(args.device, max(args.repeats, 10))
    if args.part in ("fork", "both"):
        fork_latency(args.forks)


if __name__ == "__main__":
    main()
