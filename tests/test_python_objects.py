"""`search.run` and `search.export` given Python objects: a space as a dict or TOML text, a model
factory, data as arrays or a Dataset; from a script (two workers, and `python -`), resumed and
exported from Python, refused by the command line in one line, and every bad call in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

import search
from search.errors import SearchError

SCRIPT = """
import sys

import numpy as np
import search
from sklearn.datasets import load_digits
from torch import nn


class Net(nn.Module):  # defined in the script's __main__: it reaches the workers by value
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def build(input_shape, num_classes, width):
    return Net(width)


digits = load_digits()
x, y = digits.images.astype("float32")[:, None], digits.target
data = ((x[:900], y[:900]), (x[900:1100], y[900:1100]))
space = {
    "task": {"epochs": 1},
    "params": {
        "lr": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "width": {"type": "int", "low": 8, "high": 32},
    },
}

if __name__ == "__main__":
    trials, jobs = int(sys.argv[1]), int(sys.argv[2])
    study = search.run(space=space, model=build, data=data, trials=trials, jobs=jobs)
    print("finished", len([t for t in study.trials if t.state.is_finished()]))
    if len(sys.argv) > 3:
        exported = search.export(study.study_name, model=build, data=data, out=sys.argv[3])
        print("test", exported.metrics["test_accuracy"])
"""


def python(folder: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=folder,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_objects_from_a_script_run_on_two_workers_resume_export_and_the_cli_refuses(
    tmp_path: Path, cli
) -> None:
    (tmp_path / "tune.py").write_text(SCRIPT)
    first = python(tmp_path, "tune.py", "4", "2")
    assert first.returncode == 0, first.stderr
    assert "created study build (space space (a dict)" in first.stdout
    assert "finished 4" in first.stdout

    study = optuna.load_study(study_name="build", storage=f"sqlite:///{tmp_path}/studies/build.db")
    assert study.user_attrs["search.space"]["task"] == {
        "epochs": 1,
        "model": "<python>:build",
        "data": "<python>:data",
    }
    recorded = study.user_attrs["search.fingerprints"]
    assert recorded["model"]["source"].startswith("def build(input_shape, num_classes, width)")
    assert recorded["data"]["kind"] == "python" and recorded["data"]["examples"]["test"] == 200

    for command in (
        ("run", "--study", "build", "--trials", "6"),
        ("worker", "--study", "build", "--trials", "6"),
        ("export", "build", "--out", "m"),
    ):
        refused = cli(*command)
        assert refused.returncode == 2
        line = refused.stderr.strip()
        assert "\n" not in line, line
        assert "its model and its data were given as Python objects" in line, line
        assert 'study="build", model=build, data=(train, test)' in line, line

    again = python(tmp_path, "tune.py", "6", "1", "exported")
    assert again.returncode == 0, again.stderr
    assert "resuming study build: 4 of 6 trials finished" in again.stdout
    assert "finished 6" in again.stdout
    folder = tmp_path / "exported"
    assert (folder / "factory.pkl").is_file()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    # The exported model loads where the script's code is not.
    predicted = cli("predict", str(folder), str(write_npz(tmp_path)), cwd=Path("/"))
    assert predicted.returncode == 0, predicted.stderr


TRAIN_SCRIPT = """
import sys

import search
import torch
from sklearn.datasets import load_digits
from torch import nn


class Logistic(nn.Module):  # of __main__: the exported module.pt carries it by value
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10)

    def forward(self, x):
        return self.linear(x)


def fit(params, report):
    digits = load_digits()
    x, y = torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    model = Logistic()
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"])
    for epoch in range(1, report.epochs + 1):
        for i in range(0, 1200, 100):
            loss = nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(x[1200:]).argmax(1) == y[1200:]).float().mean().item()
        report(epoch, accuracy, loss=loss.item())
    return accuracy, model


space = {
    "task": {"epochs": 3, "direction": "maximize", "metric": "accuracy"},
    "params": {"lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True}},
}

if __name__ == "__main__":
    trials, jobs = int(sys.argv[1]), int(sys.argv[2])
    study = search.run(space=space, train=fit, trials=trials, jobs=jobs)
    print("finished", len([t for t in study.trials if t.state.is_finished()]))
    if len(sys.argv) > 3:
        exported = search.export(study, train=fit, out=sys.argv[3])
        print("value", exported.metrics["val_accuracy"])
"""


def test_a_training_function_from_a_script_on_two_workers_resumes_and_exports(
    tmp_path: Path, cli
) -> None:
    (tmp_path / "fit.py").write_text(TRAIN_SCRIPT)
    first = python(tmp_path, "fit.py", "4", "2")
    assert first.returncode == 0, first.stderr
    assert "finished 4" in first.stdout
    refused = cli("run", "--study", "fit", "--trials", "5")
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith(
        "its training function was given as a Python object, which only Python can give "
        'again: search.run(study="fit", train=fit, trials=5)'
    ), refused.stderr
    again = python(tmp_path, "fit.py", "5", "1", "model")
    assert again.returncode == 0, again.stderr
    assert "finished 5" in again.stdout
    # module.pt loads in a process that has never seen the script.
    load = "import torch; m = torch.load('model/module.pt', weights_only=False); "
    load += "print(type(m).__name__, m(torch.zeros(2, 64)).shape)"
    loaded = python(tmp_path, "-c", load.replace("model/", f"{tmp_path}/model/"))
    assert loaded.returncode == 0, loaded.stderr
    assert "Logistic torch.Size([2, 10])" in loaded.stdout


def write_npz(folder: Path) -> Path:
    digits = load_digits()
    path = folder / "new.npz"
    np.savez(path, x=digits.images.astype("float32")[:20, None])
    return path


def test_a_program_read_from_standard_input_runs_two_workers(tmp_path: Path) -> None:
    program = SCRIPT.replace('if __name__ == "__main__":', "if True:").replace(
        "int(sys.argv[1]), int(sys.argv[2])", "3, 2"
    )
    result = python(tmp_path, "-", stdin=program)
    assert result.returncode == 0, result.stderr
    assert "finished 3" in result.stdout


def digits_data(n: int = 600):
    digits = load_digits()
    x = digits.images.astype("float32")[:, None]
    return (x[:n], digits.target[:n]), (x[n : n + 150], digits.target[n : n + 150])


def build(input_shape, num_classes, width):
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, num_classes)
    )


SPACE_TEXT = textwrap.dedent(
    """
    [task]
    epochs = 1

    [params.width]
    type = "int"
    low = 4
    high = 16
    """
)


def test_a_space_as_toml_text_with_a_dataset_or_a_file_path_as_data(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (train_x, train_y), test = digits_data()
    dataset = torch.utils.data.TensorDataset(torch.tensor(train_x), torch.tensor(train_y))
    quiet = {"echo": lambda line: None}
    study = search.run(space=SPACE_TEXT, model=build, data=(dataset, None), trials=2, **quiet)
    assert study.study_name == "build" and len(study.trials) == 2
    assert study.user_attrs["search.fingerprints"]["data"]["test"] == "held out"

    np.savez(tmp_path / "d.npz", x_train=train_x, y_train=train_y, x_test=test[0], y_test=test[1])
    study = search.run(space=SPACE_TEXT, model=build, data="d.npz", study="file", trials=2, **quiet)
    assert study.user_attrs["search.space"]["task"]["data"] == "d.npz"


def test_a_resume_with_other_data_or_another_factory_is_refused(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)
    data = digits_data()
    quiet = {"echo": lambda line: None}
    search.run(space=SPACE_TEXT, model=build, data=data, trials=1, **quiet)

    def other(input_shape, num_classes, width):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, num_classes))

    with pytest.raises(SearchError, match=r"data= is not the data the study was created with"):
        search.run(study="build", model=build, data=digits_data(500), trials=2, **quiet)
    with pytest.raises(SearchError, match=r"factory other given from Python is not build"):
        search.run(study="build", model=other, data=data, trials=2, **quiet)
    with pytest.raises(SearchError, match=r"its model was given as a Python object"):
        search.run(study="build", data=data, trials=2, **quiet)
    assert len(search.run(study="build", model=build, data=data, trials=2, **quiet).trials) == 2


BAD_CALLS = {
    "a factory that is not callable": (
        {"model": 3},
        "search.run: model= must be a callable (a function or class), got int 3",
    ),
    "a space dict with a bad key": (
        {"space": {"task": {"epochs": 1, "epoch": 2}, "params": {}}},
        "space (a dict): task.epoch: unknown key",
    ),
    "data of the wrong form": ({"data": 5}, "task.data: data= is 'int'; give (train, test)"),
    "data of three splits": ({"data": (1, 2, 3)}, "data= is 'tuple' of 3"),
    "data as one (x, y) pair": (
        {"data": digits_data()[0]},
        "task.data: data= looks like one (x, y) pair; give (train, test)",
    ),
    "model= with train=": (
        {"train": lambda params, report: 0.0},
        "search.run: model= and train= together",
    ),
    "a space of another type": ({"space": 42}, "search.run: space= must be a path, a dict"),
    "a space that is not TOML": (
        {"space": "[task]\nepochs = = 1\n"},
        "space (TOML text): not valid TOML",
    ),
    "data with a NaN": ("nan", "task.data: data=: training data: 1 example has NaN"),
    "objects with no space and no study": (
        {"space": None},
        "search.run: no study build yet, and no space= to create it from",
    ),
    "a factory that fails": (
        {"model": lambda input_shape, num_classes, width: nn.Linear(3, 2)},
        "the forward pass on 2 training examples",
    ),
    "a __main__ reference": (
        {
            "model": None,
            "data": None,
            "space": {
                "task": {"epochs": 1, "name": "digits", "model": "__main__:build"},
                "params": {"width": {"type": "int", "low": 4, "high": 8}},
            },
        },
        "'__main__:build' names an object of the running program",
    ),
}


@pytest.mark.parametrize("case", BAD_CALLS)
def test_every_bad_call_is_one_line_and_makes_no_study(
    tmp_path: Path, monkeypatch, case: str
) -> None:
    monkeypatch.chdir(tmp_path)
    given, expected = BAD_CALLS[case]
    call = {"space": SPACE_TEXT, "model": build, "data": digits_data(), "trials": 1}
    if given == "nan":
        (x, y), test = digits_data()
        x = x.copy()
        x[0, 0, 0, 0] = np.nan
        given = {"data": ((x, y), test)}
    call.update(given)
    call = {k: v for k, v in call.items() if v is not None}
    with pytest.raises(SearchError) as error:
        search.run(**call, echo=lambda line: None)
    assert expected in str(error.value) and "\n" not in str(error.value), str(error.value)
    assert not (tmp_path / "studies").exists() or not list((tmp_path / "studies").glob("*.db"))
