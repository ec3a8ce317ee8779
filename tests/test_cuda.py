"""The GPU paths on a real CUDA device: bf16 autocast and channels_last training, data streamed
through pinned memory, a study and its export, a real out-of-memory error, two workers on one GPU,
the captured step (a CUDA graph) and its fallback, fused trials, and `--jobs auto`.

Every test here is marked ``cuda`` and skipped where torch sees no CUDA device (see conftest).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import tiny_space, toml
from tasks.formats import digits

from search import study as studies
from search import tasks
from search.fused_train import Member, fit_fused
from search.step import StepReport
from search.tasks import models
from search.tasks.data import DeviceData
from search.tasks.streaming import StreamingData
from search.train import Hyperparameters, eval_batch_size, fit

pytestmark = pytest.mark.cuda

GPU = torch.device("cuda")


def _digits_on_gpu() -> DeviceData:
    split = tasks.get("digits").load(None, False, True)
    return DeviceData.from_split(split, val_fraction=0.25, seed=0, device=GPU)


def _cnn(depth: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.build("cnn", depth, (1, 8, 8), 10)


def _study(folder: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")


def test_fit_learns_digits_in_bf16_with_float32_weights() -> None:
    data = _digits_on_gpu()
    model = _cnn()
    history = fit(model, data, Hyperparameters(lr=3e-3, batch_size=64), epochs=4, seed=1)
    assert history[-1].value > 0.9
    assert history[-1].train_loss < history[0].train_loss
    # Autocast computes in bf16; the weights (and so the optimizer's updates) stay float32.
    weights = list(model.parameters())
    assert all(p.device.type == "cuda" and p.dtype == torch.float32 for p in weights)
    conv = next(p for p in weights if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert eval_batch_size(GPU) >= len(data.val_y)  # the whole split in one evaluation


def test_the_same_seed_replays_a_trial_on_the_gpu() -> None:
    """A retried or resumed trial is the same trial again: the same seed gives the same losses."""
    data = _digits_on_gpu()
    hp = Hyperparameters(lr=1e-2, batch_size=128, optimizer="sgd", momentum=0.5)
    runs = [fit(_cnn(), data, hp, epochs=2, seed=7, reports_per_epoch=2) for _ in range(2)]
    first, again = ([(r.train_loss, r.value) for r in run] for run in runs)
    assert first == again


def test_streamed_batches_reach_the_gpu_as_the_resident_ones() -> None:
    """Pinned host memory and non-blocking copies deliver the resident path's batches, in the
    same seeded order (drawn by a CUDA generator), augmented on the device, and train alike."""
    images, labels = digits(400, colour=True)
    split = tasks.Split(images, labels)
    kwargs = {"val_fraction": 0.25, "seed": 3, "device": GPU, "augment": True}
    resident = DeviceData.from_split(split, **kwargs)
    streamed = StreamingData.from_split(split, workers=2, **kwargs)
    for (a, ay), (b, by) in zip(
        resident.batches(32, torch.Generator(GPU).manual_seed(7)),
        streamed.batches(32, torch.Generator(GPU).manual_seed(7)),
        strict=True,
    ):
        assert a.device.type == b.device.type == "cuda"
        assert torch.equal(a, b) and torch.equal(ay, by)
    hp = Hyperparameters(lr=3e-3, batch_size=32, optimizer="adam")
    accuracies = []
    for data in (resident, streamed):
        torch.manual_seed(0)
        model = models.build("cnn", 1, (3, 8, 8), 10)
        accuracies.append([r.value for r in fit(model, data, hp, epochs=2, seed=5)])
    assert accuracies[0] == accuracies[1]


def test_a_study_on_the_gpu_records_its_memory_and_exports_a_model_for_the_cpu(
    cli, tmp_path
) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=3)))
    run = cli(
        "run", "--space", "tiny.toml", "--trials", "4", "--pruner", "none", "--device", "cuda"
    )
    assert run.returncode == 0, run.stderr
    study = _study(tmp_path, "tiny")
    environment = study.user_attrs[studies.ENVIRONMENT_ATTR]
    assert environment["device"] == "cuda" and environment["cuda"] == torch.version.cuda
    assert environment["device_name"] == torch.cuda.get_device_name(0)
    for trial in study.trials:
        attrs = studies.trial_attrs(trial)
        assert trial.state == optuna.trial.TrialState.COMPLETE
        # The CUDA allocator's peak for this trial alone: a tiny CNN, far below a process's RSS.
        assert 0 < attrs["peak_memory_mb"] < 200

    exported = cli("export", "tiny", "--out", "model", "--device", "cuda")
    assert exported.returncode == 0, exported.stderr
    assert "on cuda" in exported.stdout
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["val_accuracy"] == pytest.approx(study.best_value, abs=0.01)
    # Trained on the GPU, saved for the CPU: the scripted model runs on CPU tensors as loaded.
    test_split = tasks.get("digits").load(None, False, False)
    batch, labels = test_split.inputs[:256].float(), test_split.targets[:256]
    scripted = torch.jit.load(str(tmp_path / "model" / "model.torchscript.pt"))
    with torch.inference_mode():
        accuracy = (scripted(batch).argmax(1) == labels).float().mean().item()
    assert accuracy > 0.8


# A factory whose hidden layer is as wide as the space says: at the wide end a batch's
# activations take gigabytes, at the narrow end kilobytes.
WIDE_MODEL = """\
from torch import nn


def build(input_shape, num_classes, width):
    inputs = 1
    for size in input_shape:
        inputs *= size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(inputs, width), nn.ReLU(), nn.Linear(width, num_classes)
    )
"""

# `search run` in a process whose CUDA allocator may hand out only this many bytes: a GPU this
# small runs out of memory for real, in the allocator, as a too-large trial does on any GPU.
CAPPED_RUN = """\
import sys

import torch

cap = int(sys.argv[1])
torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
from search.cli import main

sys.exit(main(sys.argv[2:]))
"""


def test_a_real_out_of_memory_error_fails_the_trial_and_the_study_goes_on(tmp_path, cli) -> None:
    (tmp_path / "wide.py").write_text(WIDE_MODEL)
    (tmp_path / "capped.py").write_text(CAPPED_RUN)
    space = {
        "task": {"name": "digits", "model": "wide.py:build", "epochs": 1, "val_fraction": 0.25},
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [1024]},
            # 2**20 hidden units: each bf16 activation of a batch of 1024 takes 2 GiB
            "width": {"type": "categorical", "choices": [16, 2**20]},
        },
    }
    (tmp_path / "wide.toml").write_text(toml(space))
    run = subprocess.run(
        [sys.executable, "capped.py", str(512 * 2**20), "run", "--space", "wide.toml",
         "--trials", "8", "--sampler", "random", "--pruner", "none", "--device", "cuda"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    study = _study(tmp_path, "wide")
    states = {(t.params["width"], t.state) for t in study.trials}
    assert states == {(16, optuna.trial.TrialState.COMPLETE), (2**20, optuna.trial.TrialState.FAIL)}
    wide = [t for t in study.trials if t.params["width"] == 2**20]
    assert all(t.user_attrs["fail_reason"] == "oom" for t in wide)
    first = studies.trial_attrs(wide[0])
    assert first["oom_at"]["batch_size"] == 1024 and first["oom_at"]["width"] == 2**20
    assert re.search(r"FAIL +oom at epoch 1: batch_size 1024, width 1048576", run.stdout)
    # The memory came back: narrow trials after the wide one trained (all COMPLETE, above).
    assert any(t.number > wide[0].number for t in study.trials if t.params["width"] == 16)


def test_two_workers_share_one_gpu(cli, tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space()))
    run = cli("run", "--space", "tiny.toml", "--trials", "6", "--jobs", "2", "--gpus", "0")
    assert run.returncode == 0, run.stderr
    study = _study(tmp_path, "tiny")
    assert studies.count_finished(study) == 6
    assert all(t.state != optuna.trial.TrialState.FAIL for t in study.trials)


# The recipes a captured step must hold: each optimizer's fused or capturable form, a schedule
# with warm-up setting the rate on the device, clipping.
CAPTURED_RECIPES = [
    Hyperparameters(lr=3e-3, batch_size=64, optimizer="adamw", lr_schedule="cosine", warmup=0.1,
                    grad_clip=1.0),
    Hyperparameters(lr=1e-2, batch_size=64, optimizer="sgd", momentum=0.9, lr_schedule="onecycle"),
    Hyperparameters(lr=1e-3, batch_size=64, optimizer="rmsprop", momentum=0.5, label_smoothing=0.1),
]  # fmt: skip


@pytest.mark.parametrize("hp", CAPTURED_RECIPES, ids=lambda hp: hp.optimizer)
def test_a_captured_step_replays_a_cuda_graph_and_trains_as_the_eager_one(hp) -> None:
    data = _digits_on_gpu()
    runs = {}
    for mode in ("eager", "captured"):
        report = StepReport()
        runs[mode] = fit(_cnn(), data, hp, epochs=3, seed=1, step=mode, step_report=report)
        assert report.ran == ("graph" if mode == "captured" else "eager"), report.fallback
    for eager, captured in zip(runs["eager"], runs["captured"], strict=True):
        assert captured.train_loss == pytest.approx(eager.train_loss, rel=0.05)  # bf16
        assert captured.value == pytest.approx(eager.value, abs=0.03)
    assert runs["captured"][-1].value > 0.85


class _ReadsBack(torch.nn.Module):
    """A model that reads a value back to the host in its forward: no CUDA graph can hold it."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = _cnn(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 1e6:
            raise ValueError("huge input")
        return self.inner(x)


def test_a_step_that_cannot_be_captured_trains_eagerly_and_says_why() -> None:
    data = _digits_on_gpu()
    report = StepReport()
    history = fit(
        _ReadsBack(), data, Hyperparameters(lr=3e-3, batch_size=64), epochs=2, seed=0,
        step="captured", step_report=report,
    )  # fmt: skip
    assert report.ran == "eager"
    assert report.fallback.startswith("CUDA graph capture: ")
    assert history[-1].value > 0.8  # every batch trained, the one of the failed capture too


def test_fused_trials_on_the_gpu_train_as_each_alone_captured_or_not() -> None:
    data = _digits_on_gpu()
    alone = [fit(_cnn(), data, hp, epochs=2, seed=i) for i, hp in enumerate(CAPTURED_RECIPES)]
    for step in ("eager", "captured"):
        members = [Member(_cnn(), hp, i) for i, hp in enumerate(CAPTURED_RECIPES)]
        report = fit_fused(members, data, epochs=2, step=step)
        assert report.ran == ("graph" if step == "captured" else "eager"), report.fallback
        for solo, member in zip(alone, members, strict=True):
            for a, b in zip(solo, member.history, strict=True):
                assert b.train_loss == pytest.approx(a.train_loss, rel=0.05)
                assert b.value == pytest.approx(a.value, abs=0.03)


def test_a_study_fuses_captures_and_picks_its_jobs_on_the_gpu(cli, tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space()))
    run = cli("run", "--space", "tiny.toml", "--trials", "8", "--fuse", "4", "--jobs", "auto",
              "--device", "cuda", "--pruner", "none")  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert re.search(r"--jobs auto: captured steps in groups of 4 keep the GPU busy", run.stdout)
    trials = _study(tmp_path, "tiny").trials
    assert len(trials) == 8
    for trial in trials:
        attrs = studies.trial_attrs(trial)
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert attrs["step"] == "graph" and "step_fallback" not in attrs
        assert 1 <= attrs.get("fused", 1) <= 4
