"""The GPU path (issue 3). Without CUDA these skip (this development machine has none); on a GPU
machine `bench/gpu_check.sh` runs them with the trainer's and probe's own tests, whose runs use
the GPU there by themselves (device="auto"). The settings that place workers on GPUs are checked
everywhere."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from gradwatch.config import RunConfig
from gradwatch.loop import train
from gradwatch.probe import watch
from gradwatch.server.launcher import LocalLauncher, nvidia_gpus
from gradwatch.server.settings import Settings, SettingsError
from torch import nn

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh)")


def test_gpu_settings_are_read_and_checked(tmp_path: Path) -> None:
    def settings(**env: str) -> Settings:
        return Settings.from_env({"GRADWATCH_DATA_DIR": str(tmp_path), **env})

    assert settings(GRADWATCH_GPUS="0, 2").gpus == ["0", "2"]
    assert settings(CUDA_VISIBLE_DEVICES="1,3").gpus == ["1", "3"]  # the server's own visible set
    assert settings(CUDA_VISIBLE_DEVICES="-1").gpus == []  # CUDA hidden: no GPU to spread over
    assert settings(GRADWATCH_GPUS="2", CUDA_VISIBLE_DEVICES="0,1").gpus == ["2"]  # GRADWATCH_GPUS wins
    assert settings(GRADWATCH_GPUS="", CUDA_VISIBLE_DEVICES="0,1").gpus == ["0", "1"]  # empty: not set
    unset = settings()
    assert unset.gpus is None  # not set: the launcher finds them at start...
    assert LocalLauncher(unset).gpus == nvidia_gpus()  # ...from the driver or the device nodes
    assert settings(GRADWATCH_GPU_MEMORY_FRACTION="0.45").gpu_memory_fraction == 0.45
    with pytest.raises(SettingsError, match="GRADWATCH_GPU_MEMORY_FRACTION"):
        settings(GRADWATCH_GPU_MEMORY_FRACTION="2")


def test_gpus_are_found_from_the_driver_or_from_the_device_nodes(tmp_path: Path) -> None:
    proc, dev = tmp_path / "proc", tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset", "null"):
        (dev / name).touch()
    assert nvidia_gpus(str(proc), str(dev)) == []  # the driver's files, no GPU node: none
    (dev / "nvidia3").touch()  # a container given host GPU 3: it is its CUDA device 0
    (dev / "nvidia7").touch()
    assert nvidia_gpus(str(proc), str(dev)) == ["0", "1"]  # /proc masked (the NVIDIA runtime)
    proc.mkdir()
    for bus in ("0000:01:00.0", "0000:02:00.0", "0000:03:00.0"):
        (proc / bus).mkdir()
    assert nvidia_gpus(str(proc), str(dev)) == ["0", "1", "2"]  # the driver's list first


@cuda
def test_probe_on_cuda_equals_plain_pytorch() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 3)).cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    probe = watch(net, opt, stats_every=1)
    x, y = torch.randn(64, 12, device="cuda"), torch.randint(0, 3, (64,), device="cuda")
    for _ in range(3):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        grads = [p.grad.norm().item() for p in net.parameters()]
        before = [p.detach().clone() for p in net.parameters()]
        probe.record(loss)
        opt.step()
        after = [p.detach() for p in net.parameters()]
        ratios = [(b - a).norm().item() / b.norm().item() for b, a in zip(before, after, strict=True)]
    stats = probe.flush()  # the last step's copy is read one step late: flush() waits for it
    assert stats["step"] == 3
    assert stats["grad_norm"] == pytest.approx(grads, rel=1e-4)
    assert stats["weight_norm"] == pytest.approx([b.norm().item() for b in before], rel=1e-4)
    assert stats["update_ratio"] == pytest.approx(ratios, rel=1e-3)
    assert stats["loss"] == pytest.approx(loss.item(), rel=1e-5)
    probe.close()


@cuda
def test_a_digits_run_trains_on_the_gpu() -> None:
    events: list[dict] = []
    summary = train(RunConfig(steps=60, eval_every=30, device="cuda"), events.append)
    started = next(e for e in events if e["type"] == "run.started")
    assert started["device"].startswith("cuda")
    losses = [e["loss"] for e in events if e["type"] == "metrics"]
    assert len(losses) == 60 and summary["step"] == 60
    assert sum(losses[-10:]) < sum(losses[:10])


@cuda
def test_a_cnn_with_bf16_autocast_and_channels_last_trains() -> None:
    events: list[dict] = []
    cfg = RunConfig(model="cnn", depth=4, width=32, batchnorm=True, amp=True, steps=40, eval_every=20,
                    device="cuda")
    summary = train(cfg, events.append)
    assert summary["step"] == 40 and summary["diverged_step"] is None
    assert all(math.isfinite(g) for e in events if e["type"] == "metrics" for g in e["grad_norm"])


@cuda
def test_out_of_gpu_memory_ends_the_run_failed_with_the_message(tmp_path: Path) -> None:
    """A worker capped at a sliver of the GPU's memory: the run ends `failed` with torch's
    out-of-memory message, and the server carries on."""
    from .conftest import LiveServer

    server = LiveServer(tmp_path / "data", env={"GRADWATCH_GPU_MEMORY_FRACTION": "0.000001"}).start()
    try:
        run = server.create_run({"model": "cnn", "depth": 4, "width": 64, "steps": 50, "device": "cuda"})
        failed = server.wait_status(run["id"], ("failed",), timeout=120)
        assert "out of memory" in failed["error"].lower(), failed["error"]
        assert server.client.get("/api/health").json()["status"] == "ok"
    finally:
        server.stop()
