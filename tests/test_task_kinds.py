"""Every kind of supervised task through the CLI in a subprocess, as a user brings it: token ids to an
Embedding from a .npz, a .pt and a loader; a table of numbers beside integer category codes; a
regression from run to predict and bench; a per-pixel task with the user's own loss and metric;
string labels; augmentation on a folder; and every bad input, refused in one line with nothing
written."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import toml
from tasks.formats import digits, write_image_folder

from search import study as studies

VOCAB, LENGTH = 30, 12

TEXT_MODEL = """\
import torch
from torch import nn


class Bag(nn.Module):
    def __init__(self, vocab, dim, num_classes):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        if ids.dtype != torch.int64:
            raise TypeError(f"token ids reach the model as {ids.dtype}")
        mask = (ids != 0).unsqueeze(-1).float()  # 0 pads the shorter sequences
        pooled = (self.embed(ids) * mask).sum(1) / mask.sum(1).clamp_min(1)
        return self.head(pooled)


def build(*, input_shape, num_classes, vocab, dim=16):
    (length,) = input_shape
    return Bag(vocab, dim, num_classes)
"""

TABLE_MODEL = """\
import torch
from torch import nn


class Table(nn.Module):
    def __init__(self, numbers, cardinalities, width, num_classes):
        super().__init__()
        self.embeds = nn.ModuleList(nn.Embedding(n, 4) for n in cardinalities)
        self.body = nn.Sequential(nn.Linear(numbers + 4 * len(cardinalities), width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, numbers, codes):
        if codes.dtype != torch.int64 or not numbers.is_floating_point():
            raise TypeError(f"numbers {numbers.dtype}, codes {codes.dtype}")
        embedded = [embed(codes[:, i]) for i, embed in enumerate(self.embeds)]
        return self.head(self.body(torch.cat([numbers, *embedded], dim=1)))


def build(*, input_shape, num_classes, width=16):
    (numbers,), (codes,) = input_shape
    return Table(numbers, [5, 4][:codes], width, num_classes)
"""

PIXELS_MODEL = """\
from torch import nn


def build(*, input_shape, num_classes, width=8):
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, num_classes, 1)
    )
"""

PIXELS_SCORING = """\
import torch.nn.functional as F


def pixel_loss(output, target):
    return F.cross_entropy(output, target, ignore_index=-1)


def pixel_accuracy(output, target):
    counted = target >= 0  # -1: a pixel nobody labelled
    hits = ((output.argmax(1) == target) & counted).sum(dim=(1, 2))
    return hits / counted.sum(dim=(1, 2))  # one value per image
"""


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Padded token sequences of 3 classes: each class draws most of its tokens from its own
    third of the vocabulary."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    ids = np.zeros((n, LENGTH), dtype=np.int64)
    for i, label in enumerate(labels):
        length = rng.integers(5, LENGTH + 1)
        own = rng.integers(1 + 9 * label, 10 + 9 * label, length)
        noise = rng.integers(1, VOCAB, length)
        ids[i, :length] = np.where(rng.random(length) < 0.7, own, noise)
    return ids, labels


def _table(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    numbers = rng.normal(size=(n, 3)).astype(np.float32) * [1.0, 100.0, 0.01] + [0, 500, 0]
    codes = np.stack([rng.integers(0, 5, n), rng.integers(0, 4, n)], axis=1)
    labels = (numbers[:, 0] + 0.8 * (codes[:, 0] - 2) > 0).astype(int)  # both inputs matter
    return {"num": numbers, "cat": codes, "y": labels}


def _project(folder: Path, space: dict[str, Any], files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    path = folder / "task.toml"
    path.write_text(toml(space))
    return path


def _study(folder: Path, name: str = "task") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")


def _space(data: str, model: str, params: dict[str, Any] | None = None, **task: Any) -> dict:
    return {
        "task": {"data": data, "model": model, "epochs": 3, **task},
        "params": params
        or {
            "lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64]},
        },
    }


def _text_data(root: Path, kind: str) -> str:
    (x, y), (x_test, y_test) = _tokens(600, 0), _tokens(150, 1)
    if kind == "npz":
        np.savez(root / "text.npz", x_train=x, y_train=y, x_test=x_test, y_test=y_test)
        return "text.npz"
    if kind == "pt":
        torch.save(
            {
                "x_train": torch.from_numpy(x),
                "y_train": torch.from_numpy(y),
                "x_test": torch.from_numpy(x_test),
                "y_test": torch.from_numpy(y_test),
            },
            root / "text.pt",
        )
        return "text.pt"
    np.savez(root / "arrays.npz", x=x, y=y)
    (root / "text_loader.py").write_text(
        "import numpy as np\n"
        "import torch\n"
        "from torch.utils.data import Dataset\n\n"
        "class Sentences(Dataset):\n"
        "    classes = ['sport', 'weather', 'music']\n"
        "    def __init__(self):\n"
        "        arrays = np.load(__file__.replace('text_loader.py', 'arrays.npz'))\n"
        "        self.x, self.y = torch.from_numpy(arrays['x']), arrays['y']\n"
        "    def __len__(self):\n"
        "        return len(self.y)\n"
        "    def __getitem__(self, i):\n"
        "        return self.x[i], int(self.y[i])\n\n"
        "def load():\n"
        "    return Sentences(), None\n"
    )
    return "text_loader.py:load"


@pytest.mark.parametrize("kind", ["npz", "pt", "loader"])
def test_token_ids_reach_an_embedding_as_int64_from_every_kind_of_data(
    cli, tmp_path, kind: str
) -> None:
    data = _text_data(tmp_path, kind)
    space = _space(data, "text.py:build", model_args={"vocab": VOCAB})
    path = _project(tmp_path, space, {"text.py": TEXT_MODEL})
    result = cli("run", "--space", str(path), "--trials", "3", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    study = _study(tmp_path)
    assert studies.count_finished(study) == 3
    fingerprint = study.user_attrs[studies.FINGERPRINTS_ATTR]["data"]
    assert fingerprint["inputs"] == [{"name": "x", "dtype": "int64", "shape": [LENGTH]}]
    assert study.best_value > 0.8  # the tokens say the class; ids z-scored would say nothing
    if kind == "loader":
        assert fingerprint["classes"] == ["sport", "weather", "music"]  # the Dataset's names


def test_numbers_beside_category_codes_reach_the_model_as_two_inputs(cli, tmp_path) -> None:
    train, test = _table(600, 0), _table(150, 1)
    np.savez(
        tmp_path / "table.npz",
        x_train_num=train["num"],
        x_train_cat=train["cat"],
        y_train=train["y"],
        x_test_num=test["num"],
        x_test_cat=test["cat"],
        y_test=test["y"],
    )
    space = _space(
        "table.npz",
        "table.py:build",
        {
            "lr": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True},
            "width": {"type": "categorical", "choices": [8, 16]},
        },
        recipe={"batch_size": 32},
    )
    path = _project(tmp_path, space, {"table.py": TABLE_MODEL})
    result = cli("run", "--space", str(path), "--trials", "3", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    study = _study(tmp_path)
    inputs = study.user_attrs[studies.FINGERPRINTS_ATTR]["data"]["inputs"]
    assert [(i["name"], i["dtype"], i["shape"]) for i in inputs] == [
        ("num", "float32", [3]),
        ("cat", "int64", [2]),
    ]
    assert study.best_value > 0.85

    export = cli("export", "task", "--out", "model")
    assert export.returncode == 0, export.stderr
    used = json.loads((tmp_path / "model" / "model.json").read_text())
    assert [i["prepared"] for i in used["inputs"]] == ["standardized", "as integers"]
    assert "model.onnx: reloaded" in export.stdout, export.stdout
    predicted = cli("predict", "model", "table.npz")
    assert predicted.returncode == 0, predicted.stderr
    test_accuracy = json.loads((tmp_path / "model" / "metrics.json").read_text())["test_accuracy"]
    assert f"accuracy {test_accuracy:.4f} on 150 labelled" in predicted.stderr


def _regression_data(root: Path) -> None:
    """Prices in thousands: targets far from standard scale, two of them per example."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4)).astype(np.float32)
    weights = np.array([[3.0, -1.0], [0.5, 2.0], [-2.0, 0.0], [1.0, 1.0]])
    y = (x @ weights * 50 + [1000.0, 200.0] + rng.normal(size=(500, 2)) * 5).astype(np.float32)
    np.savez(root / "prices.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:])


def test_a_regression_from_run_to_resume_report_best_export_predict_and_bench(
    cli, tmp_path
) -> None:
    _regression_data(tmp_path)
    space = _space(
        "prices.npz",
        "mlp",
        {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64]},
            "depth": {"type": "int", "low": 1, "high": 2},
        },
        kind="regression",
        epochs=4,
    )
    path = _project(tmp_path, space, {})
    first = cli("run", "--space", str(path), "--trials", "4", "--tensorboard", "tb")
    assert first.returncode == 0, first.stderr
    assert "val_rmse" in first.stdout and "best: val_rmse" in first.stdout
    resumed = cli("run", "--study", "task", "--trials", "6")
    assert resumed.returncode == 0, resumed.stderr
    study = _study(tmp_path)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert studies.count_finished(study) == 6
    settings = study.user_attrs[studies.SETTINGS_ATTR]
    assert (settings["kind"], settings["metric"], settings["objectives"]) == (
        "regression",
        "rmse",
        "rmse",
    )
    best = min(t.value for t in study.trials if t.value is not None)
    assert best < 60  # in the targets' units: the noise is 5, the targets' spread ~150
    # Pruned trials are the worse ones, by a metric that is better lower.
    for trial in study.trials:
        assert studies.trial_result(trial, studies.metric_of(study)) == min(
            trial.intermediate_values.values()
        )

    # TensorBoard and the dashboard's notes name the metric, with the best in its direction.
    from optuna_dashboard._note import get_note_from_system_attrs
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for trial in study.trials[:4]:
        run = EventAccumulator(str(tmp_path / "tb" / "task" / f"trial-{trial.number}"))
        run.Reload()
        reported = {e.step: e.value for e in run.Scalars("val_rmse")}
        assert reported == pytest.approx(trial.intermediate_values)
        best = min(trial.intermediate_values.values())
        assert [e.value for e in run.Scalars("best_val_rmse")] == pytest.approx([best])
        system_attrs = study._storage.get_study_system_attrs(study._study_id)
        note = get_note_from_system_attrs(system_attrs, trial._trial_id)["body"]
        assert "| epoch | val rmse |" in note

    shown = cli("show", "task")
    assert "scoring regression, val rmse (minimized)" in shown.stdout
    assert f"val_rmse {study.best_value:.4f}" in shown.stdout
    listed = cli("list")
    assert f"best val_rmse {study.best_value:.4f}" in listed.stdout
    top = json.loads(cli("best", "task", "--top", "3", "--json").stdout)
    assert [row["rmse"] for row in top] == sorted(row["rmse"] for row in top)
    assert top[0]["rmse"] == study.best_value
    report = cli("report", "task")
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "reports" / "task.html").read_text()
    assert "validation rmse (lower is better)" in page and "val rmse" in page

    export = cli("export", "task", "--out", "model")
    assert export.returncode == 0, export.stderr
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["metric"] == "rmse" and metrics["test_rmse"] < 60
    assert f"test rmse {metrics['test_rmse']:.4f}" in export.stdout
    used = json.loads((tmp_path / "model" / "model.json").read_text())
    assert used["kind"] == "regression" and used["targets"] == {"shape": [2], "standardized": True}
    # The exported model answers in the targets' own units.
    from search.exported import load_model

    arrays = np.load(tmp_path / "prices.npz")
    with torch.inference_mode():
        answers = load_model(tmp_path / "model")(torch.from_numpy(arrays["x_test"]))
    error = (answers - torch.from_numpy(arrays["y_test"])).square().mean().sqrt()
    assert float(error) == pytest.approx(metrics["test_rmse"], rel=1e-4)

    predicted = cli("predict", "model", "prices.npz", "--out", "predictions.csv")
    assert predicted.returncode == 0, predicted.stderr
    assert f"rmse {metrics['test_rmse']:.4f} on 100 labelled" in predicted.stdout
    rows = list(csv.reader((tmp_path / "predictions.csv").open()))
    assert rows[0] == ["input", "prediction_0", "prediction_1"] and len(rows) == 101
    assert float(rows[1][1]) == pytest.approx(float(answers[0, 0]), rel=1e-4)

    bench = cli(
        "bench", "hpo", "--space", str(path), "--strategies", "random+none,tpe+sha:2x",
        "--seeds", "2", "--trials", "4", "--epochs", "2",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    assert "test rmse" in bench.stdout and "final rmse" in bench.stdout, bench.stdout
    # The target is random search's final best, the lowest RMSE: the mean of 2 seeds' lowest.
    bests = []
    for seed in (0, 1):
        reference = optuna.load_study(
            study_name=f"bench-task/random+none/seed{seed}",
            storage=f"sqlite:///{tmp_path}/studies/bench-task.db",
        )
        bests.append(min(t.value for t in reference.trials if t.value is not None))
    assert f"random+none's final rmse ({np.mean(bests):.4f})" in bench.stdout, bench.stdout


def test_a_per_pixel_task_with_the_users_own_loss_and_metric(cli, tmp_path) -> None:
    images, _ = digits(360)
    pixels = images.float() / 255
    labels = (pixels[:, 0] > 0.5).long() + (pixels[:, 0] > 0.8).long()  # 3 classes a pixel
    labels[:, 0, :] = -1  # the top row unlabelled: the user's loss and metric ignore it
    torch.save(
        {
            "x_train": pixels[:300],
            "y_train": labels[:300],
            "x_test": pixels[300:],
            "y_test": labels[300:],
        },
        tmp_path / "pixels.pt",
    )
    space = _space(
        "pixels.pt",
        "net.py:build",
        loss="scoring.py:pixel_loss",
        metric="scoring.py:pixel_accuracy",
        direction="maximize",
    )
    path = _project(tmp_path, space, {"net.py": PIXELS_MODEL, "scoring.py": PIXELS_SCORING})
    result = cli("run", "--space", str(path), "--trials", "2", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    assert "val_pixel_accuracy" in result.stdout
    study = _study(tmp_path)
    assert study.user_attrs[studies.SETTINGS_ATTR]["metric"] == "pixel_accuracy"
    assert 0.8 < study.best_value <= 1.0
    data = study.user_attrs[studies.FINGERPRINTS_ATTR]["data"]
    assert data["num_classes"] == 3 and data["targets"]["shape"] == [8, 8]

    # Exported and predicted: a class a pixel, scored by the user's metric as the export was.
    export = cli("export", "task", "--out", "model")
    assert export.returncode == 0, export.stderr
    test_value = json.loads((tmp_path / "model" / "metrics.json").read_text())[
        "test_pixel_accuracy"
    ]
    predicted = cli("predict", "model", "pixels.pt", "--out", "pixels.csv")
    assert predicted.returncode == 0, predicted.stderr
    assert f"pixel_accuracy {test_value:.4f} on 60 labelled" in predicted.stdout
    rows = list(csv.reader((tmp_path / "pixels.csv").open()))
    assert len(rows) == 61 and len(rows[1][1].split()) == 64  # 8×8 classes, row by row
    assert set(rows[1][1].split()) <= {"0", "1", "2"}

    # The user's loss fails on the model check, before any study: the key names it.
    (tmp_path / "scoring.py").write_text(
        PIXELS_SCORING.replace("def pixel_loss(output, target):", "def pixel_loss(output):")
    )
    again = cli("run", "--space", str(path), "--study", "other", "--trials", "1")
    _one_line(again, "task.loss: scoring.py:pixel_loss on the model's output (2, 3, 8, 8)")
    assert not (tmp_path / "studies" / "other.db").exists()


def test_a_model_that_fails_inside_a_trial_stops_the_run_in_one_line(cli, tmp_path) -> None:
    (tmp_path / "fragile.py").write_text(
        "from torch import nn\n\n\n"
        "class Fragile(nn.Linear):\n"
        "    def forward(self, x):\n"
        "        if len(x) > 2:  # the check before the study runs 2 examples; a batch has more\n"
        "            raise ValueError(f'cannot take {len(x)} rows')\n"
        "        return super().forward(x)\n\n\n"
        "def build(*, input_shape, num_classes):\n"
        "    return Fragile(input_shape[0], num_classes)\n"
    )
    ok = _bad(tmp_path, "ok.npz", np.tile(FEATURES, (5, 1)), np.tile(CLASSES, 5))
    path = _project(tmp_path, _space(ok, "fragile.py:build"), {})
    result = cli("run", "--space", str(path), "--trials", "2")
    _one_line(result, "trial 0 raised ValueError: cannot take 32 rows (fragile.py, line 7)")


def test_string_labels_become_named_classes_through_export_and_predict(cli, tmp_path) -> None:
    images, labels = digits(400)
    names = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )
    np.savez(
        tmp_path / "named.npz",
        x_train=images[:320].numpy(),
        y_train=names[labels[:320].numpy()],
        x_test=images[320:].numpy(),
        y_test=names[labels[320:].numpy()],
    )
    path = _project(tmp_path, _space("named.npz", "cnn"), {})
    assert cli("run", "--space", str(path), "--trials", "2", "--pruner", "none").returncode == 0
    export = cli("export", "task", "--out", "model")
    assert export.returncode == 0, export.stderr
    used = json.loads((tmp_path / "model" / "model.json").read_text())
    assert used["classes"] == sorted(names.tolist())
    assert used["inputs"] == [
        {
            "name": "x",
            "dtype": "uint8",
            "shape": [1, 8, 8],
            "range": [0, 255],  # the scale the model takes: 8-bit values, as written
            "prepared": "standardized",
        }
    ]
    predicted = cli("predict", "model", "named.npz")
    assert predicted.returncode == 0, predicted.stderr
    rows = list(csv.reader(io.StringIO(predicted.stdout)))
    assert rows[0] == ["input", "prediction", "probability"] and len(rows) == 81
    assert {row[1] for row in rows[1:]} <= set(names)
    test_accuracy = json.loads((tmp_path / "model" / "metrics.json").read_text())["test_accuracy"]
    assert f"accuracy {test_accuracy:.4f} on 80 labelled" in predicted.stderr


def test_augmentation_on_a_folder_of_images_and_predict_on_its_test_folder(cli, tmp_path) -> None:
    images, labels = digits(360, colour=True, size=12)
    write_image_folder(tmp_path / "photos" / "train", images[:300], labels[:300])
    write_image_folder(tmp_path / "photos" / "test", images[300:], labels[300:])
    space = _space("photos", "cnn", image_size=[10, 10], recipe={"augment": True})
    path = _project(tmp_path, space, {})
    assert cli("run", "--space", str(path), "--trials", "2", "--pruner", "none").returncode == 0
    export = cli("export", "task", "--out", "model")
    assert export.returncode == 0, export.stderr
    used = json.loads((tmp_path / "model" / "model.json").read_text())
    assert used["image"] == {"size": [10, 10], "resize": "bilinear", "channels": 3}
    assert used["classes"] == [str(i) for i in range(10)]
    predicted = cli("predict", "model", "photos/test")
    assert predicted.returncode == 0, predicted.stderr
    test_accuracy = json.loads((tmp_path / "model" / "metrics.json").read_text())["test_accuracy"]
    assert f"accuracy {test_accuracy:.4f} on 60 labelled" in predicted.stderr
    one = sorted((tmp_path / "photos" / "test" / "3").iterdir())[0]
    single = cli("predict", "model", str(one))
    assert single.returncode == 0 and single.stdout.splitlines()[1].startswith(str(one))

    # Crop and flip are for images: token ids are refused before any study exists.
    _text_data(tmp_path, "npz")
    text = _space(
        "text.npz", "text.py:build", model_args={"vocab": VOCAB}, recipe={"augment": True}
    )
    bad = _project(tmp_path / "text", text, {"text.py": TEXT_MODEL})
    (tmp_path / "text" / "text.npz").write_bytes((tmp_path / "text.npz").read_bytes())
    refused = cli("run", "--space", str(bad), "--trials", "1", cwd=tmp_path / "text")
    _one_line(refused, "task.recipe.augment: augmentation crops and flips images")


def _one_line(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def _bad(root: Path, name: str, x: np.ndarray, y: np.ndarray) -> str:
    np.savez(root / name, x_train=x, y_train=y)
    return name


FEATURES = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
WITH_NAN = FEATURES.copy()
WITH_NAN[[7, 9, 30], 1] = np.nan
CLASSES = np.arange(40) % 4
# (data file, task keys, what the one line says)
BAD_DATA = [
    (
        ("nan.npz", WITH_NAN, CLASSES),
        {},
        "task.data: nan.npz: training data: 3 examples have NaN or infinite inputs (the first: "
        "example 7, NaN)",
    ),
    (
        ("inf.npz", FEATURES, np.where(np.arange(40) == 12, np.inf, np.arange(40) * 0.5)),
        {"kind": "regression"},
        "task.data: inf.npz: training data: 1 example has NaN or infinite targets (the first: "
        "example 12, infinite)",
    ),
    (
        ("floats.npz", FEATURES, np.linspace(0, 1, 40)),
        {},
        "labels are floats with 40 distinct values (0, 0.025641, 0.0512821, ...); for a regression "
        'target, set task.kind = "regression"',
    ),
    (
        ("codes.npz", FEATURES, CLASSES),
        {"kind": "regression"},
        "targets are integers with 4 distinct values (0, 1, 2, ...): classes? leave out task.kind "
        '= "regression"',
    ),
    (
        ("words.npz", FEATURES, np.array(["cat", "dog"] * 20)),
        {"kind": "regression"},
        "targets are strings (cat, dog, cat, ...); regression needs numbers",
    ),
]


@pytest.mark.parametrize(("data", "task", "says"), BAD_DATA, ids=[b[0][0] for b in BAD_DATA])
def test_bad_data_is_one_line_exit_2_and_writes_no_study(cli, tmp_path, data, task, says) -> None:
    name = _bad(tmp_path, *data)
    path = _project(tmp_path, _space(name, "mlp", **task), {})
    result = cli("run", "--space", str(path), "--trials", "1")
    _one_line(result, says)
    assert not (tmp_path / "studies" / "task.db").exists()


def test_a_mistyped_study_is_refused_not_made_up(cli, tmp_path) -> None:
    ok = _bad(tmp_path, "ok.npz", np.tile(FEATURES, (5, 1)), np.tile(CLASSES, 5))
    path = _project(tmp_path, _space(ok, "mlp"), {})
    (tmp_path / "tabular.toml").write_text(path.read_text())
    assert cli("run", "--space", "tabular.toml", "--trials", "1").returncode == 0
    typo = cli("run", "--study", "tabular_typo", "--trials", "2")
    _one_line(
        typo,
        "--study tabular_typo: no study 'tabular_typo' in studies/ (it has: tabular; did you "
        "mean tabular?); pass --space SPACE to create it",
    )
    assert sorted(p.name for p in (tmp_path / "studies").glob("*.db")) == ["tabular.db"]
    shown = cli("show", "tabluar")
    _one_line(shown, "no study 'tabluar' in studies/ (it has: tabular; did you mean tabular?)")
    # With neither --study nor --space: the default study, as the quick start runs it.
    default = cli("run", "--trials", "1", "--epochs", "1")
    assert default.returncode == 0 and "created study digits" in default.stdout
