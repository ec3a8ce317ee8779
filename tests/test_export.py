"""`search best` and `search export` on a real digits study trained by the CLI."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import onnxruntime
import optuna
import pytest
import torch
from conftest import tiny_study

from search import spaces, tasks
from search import study as studies
from search.exporting import ExportSettings, export, load_model

TRIALS = 4
# The same seed on the same device and thread count replays the trial exactly; the tolerance
# leaves room for a machine whose kernels sum in another order.
REPRODUCE_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory) -> Path:
    return tiny_study(tmp_path_factory.mktemp("export"), trials=TRIALS, pruner="none")


def _study(folder: Path) -> optuna.Study:
    return optuna.load_study(
        study_name="tiny", storage=f"sqlite:///{folder / 'studies' / 'tiny.db'}"
    )


def test_best_lists_the_top_trials_with_a_command_that_reproduces_each(
    cli, study_dir: Path
) -> None:
    study = _study(study_dir)
    ranked = sorted(study.trials, key=lambda t: (-t.value, t.number))

    listed = cli("best", "tiny", "--top", "3", "--json", cwd=study_dir)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [r["trial"] for r in rows] == [t.number for t in ranked[:3]]
    for row, trial in zip(rows, ranked, strict=False):
        assert row["accuracy"] == trial.value and row["params"] == trial.params
        assert row["seed"] == studies.trial_attrs(trial)["seed"] and row["epochs_run"] == 3

    text = cli("best", "tiny", cwd=study_dir)
    assert text.returncode == 0
    assert f"#{ranked[0].number} " in text.stdout and "accuracy" in text.stdout
    command = rows[1]["reproduce"].split()
    assert command[:2] == ["search", "export"]
    reproduced = cli(*command[1:], cwd=study_dir)
    assert reproduced.returncode == 0, reproduced.stderr
    metrics = json.loads((study_dir / command[-1] / "metrics.json").read_text())
    assert metrics["trial"] == rows[1]["trial"]
    assert metrics["val_accuracy"] == pytest.approx(rows[1]["accuracy"], abs=REPRODUCE_TOLERANCE)


def test_export_reproduces_the_best_trial_and_every_file_predicts_like_the_model(
    study_dir: Path, monkeypatch
) -> None:
    monkeypatch.chdir(study_dir)
    study = _study(study_dir)
    exported = export(ExportSettings(study="tiny", out=Path("models/best")))
    metrics = json.loads((study_dir / "models/best/metrics.json").read_text())
    assert metrics["trial"] == study.best_trial.number
    assert metrics["val_accuracy"] == pytest.approx(study.best_value, abs=REPRODUCE_TOLERANCE)
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert metrics["seed"] == studies.trial_attrs(study.best_trial)["seed"]
    assert torch.__version__.startswith(metrics["environment"]["versions"]["torch"])

    # Raw test images the export did not check itself on, at the dataset's own scale.
    batch = tasks.get("digits").load(None, False, False).inputs[64:128].float()
    with torch.inference_mode():
        expected = exported.model(batch)
        from_state = load_model(study_dir / "models/best")(batch)
        scripted = torch.jit.load(study_dir / "models/best/model.torchscript.pt")(batch)
    session = onnxruntime.InferenceSession(str(study_dir / "models/best/model.onnx"))
    onnx = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
    for logits in (from_state, scripted, onnx):
        assert torch.allclose(logits, expected, atol=1e-4)
        assert torch.equal(logits.argmax(1), expected.argmax(1))
    state = torch.load(study_dir / "models/best/model.pt", weights_only=True)
    assert set(state) >= {"mean", "std"}  # normalization travels with the weights

    config = tomllib.loads((study_dir / "models/best/config.toml").read_text())
    assert config["task"] == {"name": "digits", "model": "cnn", "epochs": 3, "val_fraction": 0.25}
    assert {k: v["choices"] for k, v in config["params"].items()} == {
        k: [v] for k, v in study.best_trial.params.items()
    }
    space = spaces.load(study_dir / "models/best/config.toml")  # a valid space file
    assert [p.name for p in space.params] == list(study.best_trial.params)


def test_full_train_trains_on_validation_too_and_keeps_the_last_epoch(cli, study_dir: Path) -> None:
    result = cli(
        "export", "tiny", "--out", "models/full", "--full-train", "--epochs", "2", cwd=study_dir
    )
    assert result.returncode == 0, result.stderr
    metrics = json.loads((study_dir / "models/full/metrics.json").read_text())
    assert metrics["full_train"] is True and metrics["epochs"] == 2
    assert metrics["val_accuracy"] is None and metrics["best_epoch"] is None
    assert "(train + validation)" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trial", "99"], f"--trial 99: study tiny has trials 0..{TRIALS - 1}"),
        (["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (["--out", "taken"], "--out taken: already exists and is not empty"),
    ],
)
def test_bad_export_is_one_line_and_writes_nothing(
    cli, study_dir: Path, args: list[str], message: str
) -> None:
    (study_dir / "taken").mkdir(exist_ok=True)
    (study_dir / "taken" / "keep.txt").write_text("mine")
    before = sorted(p.name for p in study_dir.iterdir())
    full = ["export", "tiny", *(args if "--out" in args else ["--out", "models/new", *args])]
    result = cli(*full, cwd=study_dir)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert sorted(p.name for p in study_dir.iterdir()) == before
    assert not (study_dir / "models" / "new").exists()
    assert (study_dir / "taken" / "keep.txt").read_text() == "mine"
