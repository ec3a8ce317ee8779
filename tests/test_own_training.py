"""A user's own training function (`task.train`, `search.run(train=fn)`): pruned, crashed and
retried (from scratch, and from its checkpoint), several workers on SQLite and PostgreSQL, the
views, trackers, export and `bench hpo` on it, and every bad function in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from conftest import search_command, toml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import search
from search.errors import SearchError

# A small real training: logistic regression on the bundled digits, with its own loop and data.
TRAIN_PY = """
import os

import torch
from sklearn.datasets import load_digits
from torch import nn


def _data():
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16
    y = torch.tensor(digits.target)
    return (x[:1200], y[:1200]), (x[1200:], y[1200:])


class Net(nn.Module):  # a class of fn.py: the exported module.pt carries it by value
    def __init__(self, width):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(64, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x):
        return self.body(x)


def train(params, report):
    (x, y), (vx, vy) = _data()
    model = Net(params["width"])
    optimizer = torch.optim.SGD(model.parameters(), lr=params["lr"])
    first = 1
    if report.restored is not None:  # a retry of a trial whose worker died
        model.load_state_dict(report.restored["model"])
        optimizer.load_state_dict(report.restored["optimizer"])
        first = report.restored["epoch"] + 1
    for epoch in range(first, report.epochs + 1):
        if os.environ.get("CRASH_AT") == f"{report.trial}:{epoch}":
            os._exit(9)  # the worker dies mid-trial
        for i in range(0, len(x), 100):
            loss = nn.functional.cross_entropy(model(x[i : i + 100]), y[i : i + 100])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            accuracy = (model(vx).argmax(1) == vy).float().mean().item()
        report(epoch, accuracy, loss=loss.item())
        if os.environ.get("CHECKPOINT", "1") == "1":
            report.checkpoint(
                {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
            )
    if os.environ.get("RETURN_MODEL"):
        return accuracy, model
    return accuracy
"""


def space(**task: object) -> dict:
    return {
        "task": {"train": "fn.py:train", "epochs": 4, "direction": "maximize", **task},
        "params": {
            "lr": {"type": "float", "low": 0.01, "high": 1.0, "log": True},
            "width": {"type": "int", "low": 4, "high": 32},
        },
    }


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "fn.py").write_text(TRAIN_PY)
    (tmp_path / "space.toml").write_text(toml(space(metric="accuracy")))
    return tmp_path


def load(folder: Path, name: str = "space", url: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=url or f"sqlite:///{folder}/studies/{name}.db"
    )


def test_a_training_function_is_tuned_pruned_and_shown_like_the_loops_trials(cli, project) -> None:
    run = cli("run", "--space", "space.toml", "--trials", "8", "--tensorboard", "tb")
    assert run.returncode == 0, run.stderr
    assert "val_acc " in run.stdout
    study = load(project)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.PRUNED) >= 1, run.stdout
    best = study.best_trial
    assert 0.5 < best.value <= 1.0
    assert sorted(best.intermediate_values) == [1, 2, 3, 4]
    attrs = best.user_attrs["search.trial"]
    assert attrs["val_values"] == [best.intermediate_values[s] for s in (1, 2, 3, 4)]
    assert len(attrs["metrics"]["loss"]) == 4 and attrs["train_loss"] == attrs["metrics"]["loss"]
    assert study.user_attrs["search.settings"]["train"] == "fn.py:train"
    assert attrs["device"] == "cpu"  # report.device: the worker's
    assert study.user_attrs["search.fingerprints"]["train"]["sha256"]

    show = cli("show", "space")
    assert "train fn.py:train" in show.stdout and "val_acc" in show.stdout, show.stdout
    best_line = cli("best", "space")
    assert f"#{best.number}" in best_line.stdout
    report = cli("report", "space")
    assert report.returncode == 0, report.stderr
    assert "Learning curves" in (project / "reports" / "space.html").read_text()
    from optuna_dashboard._note import get_note_from_system_attrs

    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    note = get_note_from_system_attrs(system_attrs, best._trial_id)["body"]
    assert "| epoch | val accuracy |" in note  # optuna-dashboard's note beside the trial
    run = EventAccumulator(str(project / "tb" / "space" / f"trial-{best.number}"))
    run.Reload()
    assert {e.step: e.value for e in run.Scalars("val_accuracy")} == pytest.approx(
        best.intermediate_values
    )
    assert [e.value for e in run.Scalars("loss")] == pytest.approx(attrs["metrics"]["loss"])


def test_a_crashed_trial_is_retried_from_its_checkpoint_and_without_one_from_scratch(
    cli, project
) -> None:
    assert cli("run", "--space", "space.toml", "--trials", "1", "--pruner", "none").returncode == 0
    crash = cli("run", "--trials", "2", "--study", "space", env={"CRASH_AT": "1:3"})
    assert crash.returncode != 0
    again = cli("run", "--trials", "2", "--study", "space", "--heartbeat", "1")
    assert again.returncode == 0, again.stderr
    trials = load(project).trials
    retry = trials[-1]
    attrs = retry.user_attrs["search.trial"]
    assert attrs["retry_of"] == 1 and attrs["resumed_from_epoch"] == 2
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]
    assert retry.intermediate_values[2] == trials[1].intermediate_values[2]

    (project / "b.toml").write_text(toml(space(metric="accuracy")))
    env = {"CHECKPOINT": "0"}
    assert (
        cli("run", "--space", "b.toml", "--trials", "1", "--pruner", "none", env=env).returncode
        == 0
    )
    crash = cli("run", "--study", "b", "--trials", "2", env={**env, "CRASH_AT": "1:3"})
    assert crash.returncode != 0
    again = cli("run", "--study", "b", "--trials", "2", "--heartbeat", "1", env=env)
    assert again.returncode == 0, again.stderr
    retry = load(project, "b").trials[-1]
    assert "resumed_from_epoch" not in retry.user_attrs["search.trial"]
    assert retry.user_attrs["search.trial"]["retry_of"] == 1
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]


def test_workers_share_a_training_functions_study_on_sqlite_and_postgresql(
    cli, project, postgres
) -> None:
    two = cli("run", "--space", "space.toml", "--trials", "6", "--jobs", "2")
    assert two.returncode == 0, two.stderr
    assert len([t for t in load(project).trials if t.state.is_finished()]) == 6

    url = postgres.database()
    made = cli("run", "--space", "space.toml", "--study", "pg", "--storage", url, "--trials", "0")
    assert made.returncode == 0, made.stderr
    workers = [
        subprocess.Popen(
            [*search_command(), "worker", "--study", "pg", "--storage", url, "--trials", "6"],
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    finished = [t for t in load(project, "pg", url).trials if t.state.is_finished()]
    assert len(finished) == 6


def test_export_runs_the_function_again_for_its_model_or_says_there_is_none(cli, project) -> None:
    assert cli("run", "--space", "space.toml", "--trials", "2", "--pruner", "none").returncode == 0
    refused = cli("export", "space", "--out", "m")
    assert refused.returncode == 2
    assert (
        "returns a value, not a model" in refused.stderr and len(refused.stderr.splitlines()) == 1
    )

    env = {"RETURN_MODEL": "1"}
    (project / "c.toml").write_text(toml(space(metric="accuracy")))
    assert (
        cli("run", "--space", "c.toml", "--trials", "2", "--pruner", "none", env=env).returncode
        == 0
    )
    exported = cli("export", "c", "--out", "m", env=env)
    assert exported.returncode == 0, exported.stderr
    metrics = json.loads((project / "m" / "metrics.json").read_text())
    best = load(project, "c").best_trial
    assert metrics["val_accuracy"] == pytest.approx(best.value)  # the same seed, the same run
    state = torch.load(project / "m" / "model.pt", weights_only=True)
    # module.pt loads where fn.py cannot be imported.
    program = (
        f"import torch; m = torch.load({str(project / 'm' / 'module.pt')!r}, weights_only=False)"
    )
    program += "; print(type(m).__name__, m(torch.zeros(3, 64)).shape, sorted(m.state_dict()))"
    loaded = subprocess.run(
        [sys.executable, "-c", program], cwd="/", capture_output=True, text=True, check=False
    )
    assert loaded.returncode == 0, loaded.stderr
    assert f"Net torch.Size([3, 10]) {sorted(state)}" in loaded.stdout


def test_bench_hpo_compares_strategies_on_a_training_function(cli, project) -> None:
    bench = cli(
        "bench",
        "hpo",
        "--space",
        "space.toml",
        "--strategies",
        "random+none,tpe+sha",
        "--seeds",
        "1",
        "--trials",
        "4",
    )
    assert bench.returncode == 0, bench.stderr
    assert "random+none" in bench.stdout and "tpe+sha" in bench.stdout
    assert (project / "reports" / "bench-space.html").is_file()


def function_space() -> dict:
    """The space as `search.run(train=fn)` takes it: the function is given, not named."""
    return {**space(), "task": {"epochs": 3, "direction": "maximize"}}


@pytest.mark.parametrize(
    ("train", "expected"),
    [
        (lambda params, report: None, "returned None; return the final value"),
        (lambda params, report: 0.5, "returned without calling report(step, value)"),
        (lambda params, report: report(0, 0.5), "step must be an integer from 1"),
        (lambda params, report: report(1, "high"), "report(step=1, value='high'): not a number"),
        (lambda params, report: report(100, 0.5), "report(step=100, ...): beyond task.epochs = 3"),
        (lambda params: 0.5, "cannot be called as fn(params, report)"),
    ],
)
def test_a_bad_training_function_is_one_line(tmp_path: Path, monkeypatch, train, expected) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SearchError) as error:
        search.run(space=function_space(), train=train, trials=1, echo=lambda line: None)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_a_functions_own_pruned_exception_prunes_and_its_own_error_stops_the_run(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.chdir(tmp_path)

    def prunes(params, report):
        report(1, 0.1)
        raise optuna.TrialPruned()

    study = search.run(
        space=function_space(), train=prunes, trials=2, study="p", echo=lambda line: None
    )
    assert [t.state.name for t in study.trials] == ["PRUNED", "PRUNED"]

    def diverges(params, report):
        report(1, 0.1)
        return float("nan")

    study = search.run(
        space=function_space(), train=diverges, trials=2, study="d", echo=lambda line: None
    )
    assert [t.user_attrs.get("fail_reason") for t in study.trials] == ["diverged", "diverged"]

    def fails(params, report):
        report(1, 0.1)
        return {}["missing"]

    with pytest.raises(SearchError, match=r"trial 0: fails raised KeyError: 'missing' \(test_own"):
        search.run(space=function_space(), train=fails, trials=2, study="f", echo=lambda l: None)
