"""Lightning and Hugging Face integrations against a real server, with the real packages on CPU:
tiny models built from code, generated data (nothing downloaded). Each fit streams one metrics row
per optimizer step with the numbers a plain loop under `gradwatch.watch()` gets for the same seed,
and Stop in the dashboard ends it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from .conftest import ROOT, LiveServer, wait_for

pytestmark = [
    # Lightning 2.6 with torch 2.14: its own pytree helper uses a name torch deprecated.
    pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers:UserWarning"),
]


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def history(server: LiveServer, run_id: str) -> dict[str, Any]:
    return server.client.get(f"/api/runs/{run_id}/metrics", params={"max_points": 100_000}).json()


def watched_reference(make_model: Any, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
                      accumulate: int, seed: int) -> list[dict[str, Any]]:
    """The same training as a plain loop under gradwatch.watch(): what the probe reports."""
    from gradwatch import watch

    torch.manual_seed(seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rows: list[dict[str, Any]] = []
    probe = watch(model, opt, on_step=rows.append)
    for i, (x, y) in enumerate(batches):
        loss = torch.nn.functional.cross_entropy(model(x), y) / accumulate
        loss.backward()
        if (i + 1) % accumulate == 0:
            opt.step()
            opt.zero_grad()
    probe.close()
    return rows


def assert_rows_match(hist: dict[str, Any], reference: list[dict[str, Any]], names: list[str]) -> None:
    assert hist["step"] == list(range(1, len(reference) + 1))
    assert [layer["name"] for layer in hist["layers"]] == names  # one column per parameter tensor
    assert all(len(row) == len(names) for row in hist["grad_norm"])
    for key in ("grad_norm", "update_ratio"):
        got, want = torch.tensor(hist[key]), torch.tensor([r[key] for r in reference])
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7, msg=lambda m, key=key: f"{key}: {m}")


# ---- Lightning -------------------------------------------------------------------------

@pytest.mark.parametrize("accumulate", [1, 4])
def test_a_lightning_fit_streams_one_row_per_optimizer_step_as_watch_sees_it(live_server: LiveServer,
                                                                             accumulate: int) -> None:
    from gradwatch.integrations.lightning import GradwatchCallback
    from torch.utils.data import DataLoader

    ex = load_example("lightning_fit")
    data = ex.clusters(8 * 24, seed=3)
    loader = DataLoader(data, batch_size=8)  # no shuffle: the same batches for the reference
    torch.manual_seed(7)
    model = ex.Classifier(hidden=16, lr=0.05)
    name = f"lit-{uuid.uuid4().hex[:6]}"
    callback = GradwatchCallback(live_server.url, token=live_server.token, name=name)
    trainer = ex.quiet_trainer(max_epochs=1, accumulate_grad_batches=accumulate, callbacks=[callback])
    trainer.fit(model, loader, DataLoader(ex.clusters(64, seed=4), batch_size=64))
    assert callback.run.error is None
    run = live_server.wait_status(callback.run.id, ("completed",), timeout=30)
    assert run["kind"] == "external" and run["name"] == name
    assert run["config"]["hidden"] == 16 and run["config"]["lr"] == 0.05  # the module's hparams
    assert run["config"]["accumulate_grad_batches"] == accumulate
    hist = history(live_server, run["id"])
    reference = watched_reference(lambda: ex.Classifier(hidden=16, lr=0.05), list(loader), 0.05, accumulate, seed=7)
    assert len(reference) == 24 // accumulate  # accumulation of 4: a quarter of the rows
    assert_rows_match(hist, reference, [n for n, _ in model.named_parameters()])
    # the loss Lightning back-propagated (the mean over the accumulated batches) and the logged accuracy
    assert all(v is not None and v > 0 for v in hist["loss"])
    assert all(v is not None and 0 <= v <= 1 for v in hist["accuracy"])


def start_example(server: LiveServer, tmp_path: Path, script: str, name: str, batches: int
                  ) -> tuple[subprocess.Popen, Path]:
    """examples/<script> against the server, training (almost) forever; its output in a log file."""
    log = tmp_path / "example.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "GRADWATCH_TOKEN": server.token}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "examples" / script), "--server", server.url,
                                 "--name", name, "--epochs", "100000", "--batches", str(batches)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def run_at_step(server: LiveServer, name: str, step: int) -> dict | None:
    """The run called `name` once it has stored `step` steps, else None."""
    run = next((r for r in server.client.get("/api/runs").json() if r["name"] == name), None)
    return run if run and run["summary"].get("step", 0) >= step else None


def test_the_lightning_example_charts_validation_and_stops_from_the_dashboard(live_server: LiveServer,
                                                                              tmp_path: Path) -> None:
    name = f"lit-stop-{uuid.uuid4().hex[:6]}"
    proc, log = start_example(live_server, tmp_path, "lightning_fit.py", name, batches=16)
    try:
        run = wait_for(lambda: run_at_step(live_server, name, 40), timeout=180,
                       what="the Lightning run to show 40 steps live")
        assert run["status"] == "running" and proc.poll() is None
        assert live_server.client.post(f"/api/runs/{run['id']}/stop").status_code == 200
        proc.wait(120)
    finally:
        proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped from the dashboard" in out
    stopped = live_server.wait_status(run["id"], ("stopped",), timeout=30)
    assert stopped["error"] == "stopped on request"
    hist = history(live_server, run["id"])
    assert hist["step"] == list(range(1, len(hist["step"]) + 1)) and len(hist["step"]) < 16 * 100000
    # validation after each epoch of 16 steps, charted with the step that follows it
    assert hist["val"]["step"][:2] == [17, 33]
    assert all(0 <= v <= 1 for v in hist["val"]["accuracy"]) and all(v > 0 for v in hist["val"]["loss"])


def test_a_lightning_fit_under_fp16_mixed_precision_reports_unscaled_gradients(live_server: LiveServer) -> None:
    from gradwatch.integrations.lightning import GradwatchCallback
    from lightning.pytorch.plugins import MixedPrecision
    from torch.utils.data import DataLoader

    ex = load_example("lightning_fit")
    loader = DataLoader(ex.clusters(8 * 6, seed=3), batch_size=8)
    torch.manual_seed(7)
    model = ex.Classifier(hidden=16, lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)  # the loss is scaled 4096x for the backward
    callback = GradwatchCallback(live_server.url, token=live_server.token, name="lit-amp")
    trainer = ex.quiet_trainer(max_epochs=1, plugins=[MixedPrecision("16-mixed", "cpu", scaler)],
                               callbacks=[callback])
    trainer.fit(model, loader, DataLoader(ex.clusters(64, seed=4), batch_size=64))
    assert scaler.get_scale() == 2.0**12  # no step was skipped: every batch is a row
    hist = history(live_server, live_server.wait_status(callback.run.id, ("completed",), timeout=30)["id"])
    reference = watched_reference(lambda: ex.Classifier(hidden=16, lr=0.05), list(loader), 0.05, 1, seed=7)
    assert hist["step"] == list(range(1, 7))
    # float16 matmuls: close to the float32 loop's norms, and nowhere near 4096 times them
    torch.testing.assert_close(torch.tensor(hist["grad_norm"]), torch.tensor([r["grad_norm"] for r in reference]),
                               rtol=3e-2, atol=1e-3)


# ---- Hugging Face transformers ---------------------------------------------------------

@pytest.mark.parametrize("accumulate", [1, 4])
def test_a_transformers_trainer_streams_one_row_per_optimizer_step_as_watch_sees_it(
        live_server: LiveServer, tmp_path: Path, accumulate: int) -> None:
    from gradwatch.integrations.transformers import GradwatchCallback
    from torch.utils.data import SequentialSampler
    from transformers import Trainer

    class InOrder(Trainer):  # no shuffling: the reference loop sees the same batches
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> SequentialSampler:
            return SequentialSampler(self.train_dataset)

    ex = load_example("transformers_trainer")
    data = ex.Sequences(8 * 24, seed=3)
    torch.manual_seed(7)
    model = ex.tiny_bert()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    constant = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0)
    name = f"hf-{uuid.uuid4().hex[:6]}"
    callback = GradwatchCallback(live_server.url, token=live_server.token, name=name)
    trainer = InOrder(model=model, train_dataset=data, optimizers=(opt, constant), callbacks=[callback],
                      args=ex.quiet_args(str(tmp_path / "out"), num_train_epochs=1, per_device_train_batch_size=8,
                                         gradient_accumulation_steps=accumulate, max_grad_norm=1.0))
    trainer.train()
    assert callback.run.error is None
    run = live_server.wait_status(callback.run.id, ("completed",), timeout=30)
    assert run["name"] == name and run["config"]["model"] == "BertForSequenceClassification"
    assert run["config"]["gradient_accumulation_steps"] == accumulate  # the TrainingArguments
    assert run["config"]["per_device_train_batch_size"] == 8

    # The reference: the same model, batches, clipping and optimizer in a plain loop under watch().
    torch.manual_seed(7)
    ref_model = ex.tiny_bert()
    ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.05, momentum=0.9)
    from gradwatch import watch

    rows: list[dict[str, Any]] = []
    probe = watch(ref_model, ref_opt, on_step=rows.append)
    losses: list[float] = []
    # As the Trainer calls the model: a model that takes loss kwargs gets the step's label count and
    # its loss is not divided by the accumulation (transformers' own rule; BERT's classification
    # loss ignores the count, so the Trainer steps on the sum of the batches' mean losses).
    takes_count = trainer.model_accepts_loss_kwargs
    count = {"num_items_in_batch": torch.tensor(8 * accumulate)} if takes_count else {}
    for i in range(24):
        out = ref_model(input_ids=data.ids[8 * i: 8 * i + 8], labels=data.labels[8 * i: 8 * i + 8], **count)
        (out.loss if takes_count else out.loss / accumulate).backward()
        losses.append(out.loss.item())
        if (i + 1) % accumulate == 0:
            torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
            ref_opt.step()
            ref_opt.zero_grad()
    probe.close()
    assert len(rows) == 24 // accumulate  # accumulation of 4: a quarter of the rows
    hist = history(live_server, run["id"])
    assert_rows_match(hist, rows, [n for n, _ in model.named_parameters()])
    step_loss = torch.tensor(losses).reshape(-1, accumulate).mean(1)  # the mean over the accumulated batches
    torch.testing.assert_close(torch.tensor(hist["loss"]), step_loss, rtol=1e-4, atol=1e-6)


def test_the_transformers_example_evaluates_and_stops_from_the_dashboard(live_server: LiveServer,
                                                                         tmp_path: Path) -> None:
    name = f"hf-stop-{uuid.uuid4().hex[:6]}"
    proc, log = start_example(live_server, tmp_path, "transformers_trainer.py", name, batches=8)
    try:
        run = wait_for(lambda: run_at_step(live_server, name, 20), timeout=180,
                       what="the Trainer's run to show 20 steps live")
        assert run["status"] == "running" and proc.poll() is None
        assert run["config"]["learning_rate"] == 1e-3 and run["config"]["eval_strategy"] == "epoch"
        assert live_server.client.post(f"/api/runs/{run['id']}/stop").status_code == 200
        proc.wait(120)
    finally:
        proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped from the dashboard" in out
    stopped = live_server.wait_status(run["id"], ("stopped",), timeout=30)
    assert stopped["error"] == "stopped on request"
    hist = history(live_server, run["id"])
    assert hist["step"] == list(range(1, len(hist["step"]) + 1))
    assert hist["val"]["step"][:2] == [9, 17]  # evaluated after each epoch of 8 steps
    assert all(0 <= v <= 1 for v in hist["val"]["accuracy"]) and all(v > 0 for v in hist["val"]["loss"])
    # The learning rate of each step, as the Trainer's default linear schedule set it: from 1e-3 down.
    lr = hist["lr"]
    assert len(lr) == len(hist["step"]) and lr[0] == pytest.approx(1e-3)
    assert all(0 < b < a for a, b in zip(lr, lr[1:], strict=False)), lr[:5]
