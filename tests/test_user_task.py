"""The user's own model and data through the CLI in a subprocess: every kind of data, every bad input,
export, streaming, changed data or code, and the shipped example end to end."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from conftest import toml
from tasks.formats import digits, write_image_folder, write_png

from search import study as studies

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "digits-folder"

# A factory with params of its own (width, dropout) and a fixed one (stem), as a user writes it.
MODEL = (EXAMPLE / "models.py").read_text()


def _space(data: str, model: str = "models.py:build", **task: Any) -> dict[str, Any]:
    return {
        "task": {"data": data, "model": model, "epochs": 2, **task},
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True},
            "batch_size": {"type": "categorical", "choices": [32, 64]},
            "width": {"type": "categorical", "choices": [8, 16]},
            "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        },
    }


def _project(folder: Path, space: dict[str, Any], name: str = "mine") -> Path:
    """A user's folder: their models.py and a space file beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(MODEL)
    path = folder / f"{name}.toml"
    path.write_text(toml(space))
    return path


def _study(folder: Path, name: str = "mine") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")


def _folder_plain(root: Path) -> dict[str, Any]:
    write_image_folder(root / "pngs", *digits(240))
    return _space("pngs")


def _folder_split_colour(root: Path) -> dict[str, Any]:
    small, labels = digits(300, colour=True)
    large, _ = digits(300, colour=True, size=12)
    write_image_folder(root / "photos" / "train", small[:200], labels[:200])
    write_image_folder(root / "photos" / "val", large[200:250], labels[200:250])
    write_image_folder(root / "photos" / "test", large[250:], labels[250:])
    return _space("photos", image_size=[10, 10])


def _npz(root: Path) -> dict[str, Any]:
    images, labels = digits(300)
    np.savez(
        root / "digits.npz",
        x_train=images[:250, 0].numpy(),
        y_train=labels[:250].numpy(),
        x_test=images[250:, 0].numpy(),
        y_test=labels[250:].numpy(),
    )
    return _space("digits.npz")


def _pt(root: Path) -> dict[str, Any]:
    images, labels = digits(300)
    torch.save({"x_train": images.float(), "y_train": labels}, root / "digits.pt")
    return _space("digits.pt")


def _loader(body: str):
    def make(root: Path) -> dict[str, Any]:
        (root / "my_loader.py").write_text(
            "import torch\n"
            "from sklearn.datasets import load_digits\n"
            "from torch.utils.data import TensorDataset\n\n"
            "def load():\n"
            "    d = load_digits()\n"
            "    x = torch.from_numpy(d.images[:300]).float().unsqueeze(1)\n"
            "    y = torch.from_numpy(d.target[:300])\n" + body
        )
        return _space("my_loader.py:load")

    return make


KINDS = {
    "folder": _folder_plain,
    "folder-splits-colour-resized": _folder_split_colour,
    "npz": _npz,
    "pt": _pt,
    "loader-tensors": _loader(
        "    return (x[:250], y[:250]), (x[250:].numpy(), y[250:].numpy())\n"
    ),
    "loader-dataset": _loader("    return TensorDataset(x, y), None\n"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_data_runs_a_study_with_a_factory_of_its_own(cli, tmp_path, kind) -> None:
    space = _project(tmp_path, KINDS[kind](tmp_path))
    result = cli("run", "--space", str(space), "--trials", "3", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    study = _study(tmp_path)
    assert studies.count_finished(study) == 3
    settings = study.user_attrs[studies.SETTINGS_ATTR]
    assert settings["model"] == "models.py:build" and settings["space_dir"] == str(tmp_path)
    fingerprints = study.user_attrs[studies.FINGERPRINTS_ATTR]
    assert fingerprints["model"]["file"] == str(tmp_path / "models.py")
    assert fingerprints["data"]["num_classes"] == 10
    # The factory got width and dropout: each trial's parameter count is its width's.
    from search.references import load

    build = load("models.py:build", tmp_path)
    shape = tuple(fingerprints["data"]["input_shape"])
    for trial in study.trials:
        assert studies.trial_attrs(trial)["data_mode"] == "resident"
        model = build(
            input_shape=shape, num_classes=10, **{k: trial.params[k] for k in ("width", "dropout")}
        )
        assert studies.trial_attrs(trial)["param_count"] == sum(
            p.numel() for p in model.parameters()
        )
        assert len(trial.intermediate_values) == 2 * 4 and 0 <= trial.value <= 1  # 4 per epoch
    if kind == "folder-splits-colour-resized":
        assert shape == (3, 10, 10) and fingerprints["data"]["examples"] == {
            "train": 200,
            "val": 50,
            "test": 50,
        }


def test_a_loader_is_called_once_per_command_and_never_by_the_workers(cli, tmp_path) -> None:
    (tmp_path / "counted.py").write_text(
        "import os, torch\n"
        "from sklearn.datasets import load_digits\n\n"
        "def load():\n"
        "    with open(os.path.join(os.path.dirname(__file__), 'calls.log'), 'a') as log:\n"
        "        log.write(f'{os.getpid()}\\n')\n"
        "    d = load_digits()\n"
        "    return (torch.from_numpy(d.images[:400]).float()[:, None], torch.from_numpy(d.target[:400])), None\n"
    )
    space = _project(tmp_path, _space("counted.py:load"))
    result = cli("run", "--space", str(space), "--trials", "4", "--jobs", "2", "--pruner", "none")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "calls.log").read_text().splitlines()) == 1
    assert studies.count_finished(_study(tmp_path)) == 4


def test_streaming_forced_trains_as_the_resident_path_does(cli, tmp_path) -> None:
    space = _project(tmp_path, _folder_plain(tmp_path))
    values = {}
    for mode in ("resident", "stream"):
        result = cli(
            "run", "--space", str(space), "--study", mode, "--trials", "2", "--data-mode", mode,
            "--pruner", "none",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        study = _study(tmp_path, mode)
        assert {studies.trial_attrs(t)["data_mode"] for t in study.trials} == {mode}
        values[mode] = [(t.params, t.intermediate_values) for t in study.trials]
    assert values["resident"] == values["stream"]


def test_export_rebuilds_a_user_model_from_its_reference(cli, tmp_path) -> None:
    space = _project(tmp_path, _folder_plain(tmp_path))
    assert cli("run", "--space", str(space), "--trials", "2", "--pruner", "none").returncode == 0
    result = cli("export", "mine", "--out", "out")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["model"] == "models.py:build" and metrics["input_shape"] == [1, 8, 8]
    assert (
        "model.torchscript.pt: reloaded" in result.stdout
        and "model.onnx: reloaded" in result.stdout
    )

    from search.exporting import load_model

    batch = digits(16)[0].float()
    with torch.inference_mode():
        rebuilt = load_model(tmp_path / "out")(batch)
        scripted = torch.jit.load(tmp_path / "out" / "model.torchscript.pt")(batch)
    assert torch.allclose(rebuilt, scripted, atol=1e-5)

    # config.toml names the data and the factory by absolute paths: it runs from anywhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = cli(
        "run", "--space", str(tmp_path / "out" / "config.toml"), "--trials", "1", cwd=elsewhere
    )
    assert again.returncode == 0, again.stderr


def test_an_untraceable_model_is_exported_with_a_skip_line(cli, tmp_path) -> None:
    (tmp_path / "dynamic.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width):\n"
        "        super().__init__()\n"
        "        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU())\n"
        "        self.head = nn.Linear(width, 10)\n"
        "    def forward(self, x):\n"
        "        # NumPy in forward: a trace keeps this batch's number as a constant\n"
        "        spread = float(x.detach().numpy().std())\n"
        "        return self.head(self.body(x)) * spread\n\n"
        "def build(*, input_shape, num_classes, width=8, dropout=0.0):\n"
        "    return Net(width)\n"
    )
    space = _project(tmp_path, _space("pngs", model="dynamic.py:build"))
    write_image_folder(tmp_path / "pngs", *digits(200))
    assert cli("run", "--space", str(space), "--trials", "1").returncode == 0
    result = cli("export", "mine", "--out", "out")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "model.torchscript.pt" in line]
    assert (
        "skipped: torch.jit.trace could not capture this model: RuntimeError: the file's outputs differ"
        in lines[0]
    ), result.stdout
    assert "model.pt: reloaded" in result.stdout
    assert not (tmp_path / "out" / "model.torchscript.pt").exists()


def test_changed_data_or_model_code_refuses_a_resume(cli, tmp_path) -> None:
    space = _project(tmp_path, _folder_plain(tmp_path))
    assert cli("run", "--space", str(space), "--trials", "1").returncode == 0
    database = tmp_path / "studies" / "mine.db"
    before = database.read_bytes()

    models = tmp_path / "models.py"
    models.write_text(MODEL + "\n# a change\n")
    result = cli("run", "--study", "mine", "--trials", "2")
    _one_line(result, "the model factory models.py:build changed since the study was created")
    models.write_text(MODEL)

    write_png(digits(1)[0][0], tmp_path / "pngs" / "3" / "extra.png")
    result = cli("run", "--study", "mine", "--trials", "2")
    _one_line(result, "the data pngs changed since the study was created (216 → 217 train")
    assert database.read_bytes() == before
    (tmp_path / "pngs" / "3" / "extra.png").unlink()
    assert cli("run", "--study", "mine", "--trials", "2").returncode == 0


def _one_line(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


MODULES = {
    "m2.py": (
        "import torch\nfrom torch import nn\nWIDTH = 3\n\n"
        "def small(*, input_shape, num_classes):\n    return nn.Linear(64, num_classes)\n\n"
        "def boom(*, input_shape, num_classes, width=8, dropout=0.0):\n"
        "    raise ValueError('width must be a power of two')\n\n"
        "def shapeless(*, input_shape, num_classes, width=8, dropout=0.0):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(5, num_classes))\n\n"
        "def eleven(*, input_shape, num_classes, width=8, dropout=0.0):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(64, 11))\n"
    ),
    "broken.py": "import torch\n\nLAYERS = undefined_helper(3)\n",
}

# (what to change in the project, what the one line says)
BAD = [
    ({"model": "nope.py:build"}, "mine.toml: task.model: nope.py: no such file (looked for "),
    ({"model": "nopkg.models:build"}, "task.model: no module named 'nopkg'"),
    (
        {"model": "models.py:biuld"},
        "task.model: models.py has no 'biuld'; did you mean 'build'? (its callables: build)",
    ),
    ({"model": "m2.py:WIDTH"}, "task.model: m2.py: 'WIDTH' is an int, not a callable"),
    (
        {"model": "m2.py:small"},
        "task.model: m2.py:small cannot take width, dropout (its parameters: input_shape, num_classes)",
    ),
    (
        {"model": "m2.py:boom"},
        "raised building the model with width=8, dropout=0.0: ValueError: width must be a power of two (m2.py, line 9)",
    ),
    (
        {"model": "m2.py:shapeless"},
        "the forward pass on 2 training examples of shape 1×8×8 (float32) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied",
    ),
    (
        {"model": "m2.py:eleven"},
        "the model's output has shape (2, 11) on 2 examples; expected (2, 10), one logit for each of the data's 10 classes",
    ),
    (
        {"model": "broken.py:build"},
        "task.model: importing broken.py failed: NameError: name 'undefined_helper' is not defined (broken.py, line 3)",
    ),
    ({"data": "missing"}, "mine.toml: task.data: missing: no such folder or file"),
    (
        {"data": "loose"},
        "task.data: folder loose has no class subfolders (4 images lie directly in it)",
    ),
    ({"data": "hollow"}, "task.data: folder hollow: class folder '1' has no images"),
    ({"data": "corrupt"}, "task.data: cannot decode image corrupt/1/bad.png"),
    (
        {"data": "sizes"},
        "task.data: images of different sizes: sizes/0/0000.png is 8×8 and sizes/1/0001.png is 12×12; set task.image_size",
    ),
    ({"data": "keys.npz"}, "task.data: keys.npz has no y_train (its keys: images, x_train)"),
    ({"data": "lengths.npz"}, "task.data: lengths.npz: training data: 10 inputs but 9 labels"),
    (
        {"data": "floats.npz"},
        "task.data: floats.npz: training data: labels are floats with 10 distinct values (0, 0.1,"
        ' 0.2, ...); for a regression target, set task.kind = "regression"',
    ),
    (
        {"data": "gaps.npz"},
        "task.data: gaps.npz: labels must be the integers 0..K-1, but 1 never occurs (the largest is 2)",
    ),
    (
        {"name": "digits"},
        "mine.toml: task: name a registered task (task.name) or your own data (task.data), exactly one of them, got both",
    ),
    (
        {"data": None},
        "mine.toml: task: name a registered task (task.name) or your own data (task.data), exactly one of them",
    ),
]


def _bad_data(root: Path) -> None:
    images, labels = digits(100)
    write_image_folder(root / "pngs", images, labels)
    root.joinpath("loose").mkdir()
    for i in range(4):
        write_png(images[i], root / "loose" / f"{i}.png")
    write_image_folder(root / "hollow", images[:1], labels[:1] * 0)
    (root / "hollow" / "1").mkdir()
    write_image_folder(root / "corrupt", images[:2], torch.tensor([0, 1]))
    (root / "corrupt" / "1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    write_image_folder(root / "sizes", images[:1], torch.tensor([0]))
    (root / "sizes" / "1").mkdir()
    write_png(digits(2, size=12)[0][1], root / "sizes" / "1" / "0001.png")
    x = np.zeros((10, 4), dtype="float32")
    np.savez(root / "keys.npz", x_train=x, images=x)
    np.savez(root / "lengths.npz", x_train=x, y_train=np.zeros(9, dtype=int))
    np.savez(root / "floats.npz", x_train=x, y_train=np.arange(10) / 10)
    np.savez(root / "gaps.npz", x_train=x, y_train=np.array([0, 2] * 5))
    for name, text in MODULES.items():
        (root / name).write_text(text)


@pytest.fixture(scope="module")
def bad_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad")
    _bad_data(root)
    return root


@pytest.mark.parametrize(("change", "says"), BAD, ids=[str(c) for c, _ in BAD])
def test_bad_user_input_is_one_line_exit_2_and_writes_no_study(
    bad_project, change, says, capsys, monkeypatch
) -> None:
    """The command's own entry point, in this process: the same path as a subprocess (the
    refusals of a changed study above run in one) without a second start-up per case."""
    from search.cli import main

    task = {**_space("pngs")["task"], **change}
    space = {**_space("pngs"), "task": {k: v for k, v in task.items() if v is not None}}
    path = _project(bad_project, space)
    monkeypatch.chdir(bad_project)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the user's folder joins it for a while
    code = main(["run", "--space", str(path), "--trials", "1"])
    captured = capsys.readouterr()
    _one_line(subprocess.CompletedProcess([], code, captured.out, captured.err), says)
    assert not list(bad_project.glob("studies/*.db"))


def test_the_python_api_runs_a_user_study_and_returns_it(tmp_path, monkeypatch) -> None:
    import search

    space = _project(tmp_path, _npz(tmp_path))
    monkeypatch.chdir(tmp_path)
    lines: list[str] = []
    study = search.run(space=space, trials=2, pruner="none", echo=lines.append, quiet=True)
    assert isinstance(study, optuna.Study) and studies.count_finished(study) == 2
    assert any("created study mine" in line for line in lines)
    with pytest.raises(
        search.SettingsError, match="unknown setting 'trails'; did you mean 'trials'"
    ):
        search.run(space=space, trails=3)


def test_the_shipped_example_end_to_end(cli, tmp_path) -> None:
    """The README's walk-through: make the images, search, join with a worker, report, best,
    export, the dashboard, and both benchmarks, on a copy of examples/digits-folder."""
    example = tmp_path / "digits-folder"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("images", "__pycache__"))
    made = subprocess.run(
        [sys.executable, str(example / "make_images.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    assert len(list((example / "images" / "train").rglob("*.png"))) == 1438
    space = str(example / "digits-folder.toml")

    run = cli("run", "--space", space, "--trials", "4", "--epochs", "2", "--jobs", "2")
    assert run.returncode == 0, run.stderr
    worker = cli("worker", "--study", "digits-folder", "--trials", "6")
    assert worker.returncode == 0, worker.stderr
    study = _study(tmp_path, "digits-folder")
    assert studies.count_finished(study) == 6
    assert {"depth", "width", "dropout"} <= set(study.best_trial.params)

    report = cli("report", "digits-folder")
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "reports" / "digits-folder.html").read_text()
    assert "models.py:build" in page and "width" in page

    best = cli("best", "digits-folder", "--json")
    assert best.returncode == 0 and json.loads(best.stdout)[0]["trial"] == study.best_trial.number

    export = cli("export", "digits-folder", "--out", "models/best")
    assert export.returncode == 0, export.stderr
    assert json.loads((tmp_path / "models/best/metrics.json").read_text())["test_accuracy"] > 0.5

    from test_dashboard import Dashboard

    dashboard = Dashboard(tmp_path, "digits-folder")
    try:
        status, body = dashboard.get("/api/studies/1")
        data = json.loads(body)
        assert status == 200 and len(data["trials"]) == 6
        assert {p["name"] for p in data["trials"][0]["params"]} >= {"width", "dropout"}
    finally:
        dashboard.stop()

    loop = cli("bench", "loop", "--space", space, "--batch-sizes", "64", "--examples", "400")
    assert loop.returncode == 0, loop.stderr
    assert "first read" in loop.stdout and "cached read" in loop.stdout
    assert [line.split()[0] for line in loop.stdout.splitlines() if "images/s" in line and "×" in line] == [
        "reference", "harness", "streaming", "recipe",
    ]  # fmt: skip

    hpo = cli(
        "bench", "hpo", "--space", space, "--samplers", "random", "--pruners", "none", "--seeds",
        "1", "--trials", "2", "--epochs", "1",
    )  # fmt: skip
    assert hpo.returncode == 0, hpo.stderr
    assert "random+none" in hpo.stdout
