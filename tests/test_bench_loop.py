"""`search bench loop` end to end on a small synthetic task: both loops (the harness on resident and
streamed data), packed workers, JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest


def test_bench_loop_measures_both_loops_and_packed_workers(cli, tmp_path: Path) -> None:
    result = cli(
        "bench", "loop", "--task", "synthetic-mnist", "--examples", "800", "--batch-sizes",
        "32,128", "--workers", "2", "--json", "loop.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SYNTHETIC" in result.stdout.splitlines()[0]
    payload = json.loads((tmp_path / "loop.json").read_text())
    rows = payload["rows"]
    assert [(r["loop"], r["batch_size"]) for r in rows] == [
        (loop, batch)
        for batch in (32, 128)
        for loop in ("reference", "harness", "streaming", "recipe", "harness ×2")
    ]
    # What the recipe (a cosine schedule with warm-up and clipping) costs a step, side by side.
    assert "the recipe (lr_schedule cosine, warmup 0.1, grad_clip 1.0) takes" in result.stdout
    for row in rows:
        assert row["images_per_second"] > 0
        reference = next(
            r for r in rows if r["loop"] == "reference" and r["batch_size"] == row["batch_size"]
        )
        ratio = row["images_per_second"] / reference["images_per_second"]
        assert abs(row["ratio"] - ratio) < 1e-9
        if row["loop"] == "harness ×2":
            assert row["seconds_per_epoch"] is None  # no single epoch time for several processes
        else:
            # 792 training images: 24 full batches of 32, 6 of 128.
            steps = 792 // row["batch_size"]
            per_second = steps * row["batch_size"] / row["seconds_per_epoch"]
            assert abs(per_second - row["images_per_second"]) / per_second < 1e-6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "mnist1d", "--model", "resnet"], "--model resnet: task mnist1d has mlp, cnn1d"),
        (["--task", "digits", "--batch-sizes", "64,0"], "every --batch-sizes value must be"),
        (
            ["--task", "digits", "--batch-sizes", "4096"],
            "--batch-sizes 4096 exceeds the 1424 training",
        ),
        (["--task", "mnist"], "MNIST"),  # no dataset in ./data: the missing files are named
    ],
)
def test_bad_bench_loop_settings_are_one_line(cli, args: list[str], message: str) -> None:
    result = cli("bench", "loop", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_bench_study_runs_the_same_study_on_both_loops(cli, write_space, tmp_path: Path) -> None:
    from conftest import tiny_space

    space = write_space(tiny_space(epochs=2))
    result = cli("bench", "study", "--space", str(space), "--trials", "4", "--json", "study.json")
    assert result.returncode == 0, result.stderr
    payload = json.loads((tmp_path / "study.json").read_text())
    harness, reference = payload["studies"]
    assert (harness["loop"], reference["loop"]) == ("harness", "reference")
    for timing in (harness, reference):
        assert 0 < timing["trial_seconds"] <= timing["wall_seconds"]
        assert 0 <= timing["overhead"] < 1 and 0 < timing["best"] <= 1
    assert payload["speedup"] == reference["wall_seconds"] / harness["wall_seconds"]
    assert "the harness ran the study" in result.stdout
    assert not (tmp_path / "studies").exists()  # its two studies lived in a temporary folder


def test_bench_loop_and_study_time_fused_trials_and_jobs_auto(cli, write_space, tmp_path) -> None:
    """The rows of the GPU measurement, on the CPU: K trials fused into one model, as many
    processes as ``--jobs auto`` picks, and a study trained in fused groups."""
    from conftest import tiny_space

    result = cli(
        "bench", "loop", "--task", "synthetic-mnist", "--examples", "800", "--batch-sizes", "32",
        "--fuse", "2", "--auto", "--json", "loop.json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    jobs = int(re.search(r"--jobs auto: .*: (\d+) process", result.stdout).group(1))
    rows = {r["loop"]: r for r in json.loads((tmp_path / "loop.json").read_text())["rows"]}
    assert set(rows) == {
        "reference",
        "harness",
        "streaming",
        "recipe",
        "fused ×2",
        f"harness ×{jobs}",
    }
    fused = rows["fused ×2"]
    # Two models' epochs of 24 batches of 32, in the seconds the group took.
    assert fused["images_per_second"] == pytest.approx(2 * 768 / fused["seconds_per_epoch"])

    space = write_space(tiny_space(epochs=2))
    study = cli("bench", "study", "--space", str(space), "--trials", "6", "--fuse", "3",
                "--harness-only", "--json", "study.json")  # fmt: skip
    assert study.returncode == 0, study.stderr
    (timing,) = json.loads((tmp_path / "study.json").read_text())["studies"]
    assert timing["loop"] == "harness fused ×3"
    assert 0 < timing["trial_seconds"] <= timing["wall_seconds"]  # each trial its group's share


def test_reference_loop_learns_as_the_harness_does() -> None:
    """The two loops differ in how batches are made, not in what is learned."""
    import torch

    from search import tasks
    from search.bench.loop import reference_fit
    from search.tasks import models
    from search.tasks.data import DeviceData
    from search.train import Hyperparameters, fit

    task = tasks.get("digits")
    data = DeviceData.from_split(
        task.load(None, False, True), val_fraction=0.25, seed=0, device=torch.device("cpu")
    )
    hp = Hyperparameters(lr=3e-3, batch_size=64, optimizer="adam")
    accuracy = {}
    for name, train in (("harness", fit), ("reference", reference_fit)):
        torch.manual_seed(0)
        model = models.build("cnn", 2, task.input_shape, task.num_classes)
        accuracy[name] = train(model, data, hp, epochs=4, seed=0)[-1].value
    assert accuracy["harness"] > 0.9 and accuracy["reference"] > 0.9, accuracy
    assert abs(accuracy["harness"] - accuracy["reference"]) < 0.05, accuracy
