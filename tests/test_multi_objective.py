"""`--objectives`: Pareto searches for accuracy and a cost, run and listed through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from conftest import tiny_space

from search import study as studies


def _dominates(a: list[float], b: list[float]) -> bool:
    """a beats b: accuracy no lower, cost no higher, and one of them strictly."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


@pytest.mark.parametrize("cost", ["train-seconds", "params"])
def test_pareto_search_records_both_objectives_and_lists_the_front(
    cli, write_space, tmp_path: Path, cost: str
) -> None:
    space = write_space(tiny_space(epochs=2))
    objectives = f"accuracy,{cost}"
    result = cli("run", "--space", str(space), "--trials", "5", "--objectives", objectives)
    assert result.returncode == 0, result.stderr
    assert f"objectives {objectives}: pruning is off" in result.stdout

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    assert study.directions == [
        optuna.study.StudyDirection.MAXIMIZE,
        optuna.study.StudyDirection.MINIMIZE,
    ]
    assert study.user_attrs[studies.SETTINGS_ATTR]["pruner"] == "none"
    for trial in study.trials:
        assert trial.state == optuna.trial.TrialState.COMPLETE
        assert trial.values[0] == max(studies.trial_attrs(trial)["val_values"])
        if cost == "params":
            assert trial.values[1] == studies.trial_attrs(trial)["param_count"]
        else:
            assert trial.values[1] == pytest.approx(
                sum(studies.trial_attrs(trial)["epoch_seconds"]), abs=1e-3
            )

    listed = cli("best", "tiny", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    front = [
        t.number
        for t in study.trials
        if not any(_dominates(o.values, t.values) for o in study.trials if o is not t)
    ]
    assert sorted(r["trial"] for r in rows) == sorted(front)
    for row in rows:
        values = study.trials[row["trial"]].values
        assert row["objectives"] == {"accuracy": values[0], cost: values[1]}
        assert row["accuracy"] == values[0] and "--trial" in row["reproduce"]
    assert [r["accuracy"] for r in rows] == sorted((r["accuracy"] for r in rows), reverse=True)

    report = cli("report", "tiny")
    assert report.returncode == 0, report.stderr
    assert "<h3>Pareto front</h3>" in (tmp_path / "reports" / "tiny.html").read_text()

    changed = cli("run", "--space", str(space), "--trials", "6", "--objectives", "accuracy")
    assert changed.returncode == 2
    assert f"was created with --objectives {objectives}" in changed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objectives", "accuracy,speed"], "unknown objective 'speed'"),
        (["--objectives", "params,accuracy"], "start with the task's metric and name each once"),
        (["--objectives", "rmse,params"], "the space's metric is accuracy; start with it"),
        (["--objectives", "accuracy,params", "--pruner", "median"], "Optuna's pruners need one"),
        (
            ["--objectives", "accuracy,params", "--sampler", "cmaes"],
            "CMA-ES optimizes one objective",
        ),
    ],
)
def test_bad_objectives_are_one_line_and_create_nothing(
    cli, write_space, tmp_path: Path, args: list[str], message: str
) -> None:
    space = write_space(tiny_space(epochs=2))
    result = cli("run", "--space", str(space), "--trials", "2", *args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "studies").exists()
