"""`search show` on studies of every vintage: costs written as one attr or key by key, and ties."""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from search import study as studies
from search import summary

COSTS = {"epochs_run": 4, "seconds": 1.5, "images_per_second": [900.0, 1200.0], "param_count": 321}


def _study(tmp_path: Path, name: str = "show") -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / name}.db"
    study = optuna.create_study(
        storage=studies.open_storage(url, create=True), study_name="show", direction="maximize"
    )
    return study, url


def _trial(value: float, user_attrs: dict) -> optuna.trial.FrozenTrial:
    return create_trial(
        value=value,
        params={"lr": value / 100},
        distributions={"lr": FloatDistribution(0, 1)},
        intermediate_values={1: value},
        user_attrs=user_attrs,
    )


def test_show_counts_the_trials_that_tie_for_the_best(tmp_path) -> None:
    study, url = _study(tmp_path)
    study.add_trial(_trial(0.5, {studies.TRIAL_ATTR: COSTS}))
    for _ in range(3):
        study.add_trial(_trial(0.9, {studies.TRIAL_ATTR: COSTS}))
    shown = summary.show(study, url)
    assert "best    trial 1  val_acc 0.9000" in shown
    assert "3 trials tie for the best val_acc; this is the earliest" in shown
    assert "search best --top 3" in shown
    assert "Pareto" not in shown


def test_costs_read_the_same_written_as_one_attr_or_key_by_key(tmp_path) -> None:
    study, url = _study(tmp_path)
    study.add_trial(_trial(0.9, COSTS))  # a study recorded before costs were one attr
    old = summary.show(study, url)
    assert "4 epochs, 1.5 s, 1,200 examples/s, 321 parameters" in old
    assert "tie" not in old
    newer, url = _study(tmp_path, "newer")
    newer.add_trial(_trial(0.9, {studies.TRIAL_ATTR: COSTS}))
    assert summary.show(newer, url).splitlines()[-1] == old.splitlines()[-1]
    # A retry of a trial recorded key by key carries copies of those keys; its own costs win.
    mixed = _trial(0.9, {**COSTS, studies.TRIAL_ATTR: {**COSTS, "seconds": 2.5}})
    assert studies.trial_attrs(mixed)["seconds"] == 2.5
    failed = create_trial(
        state=TrialState.FAIL, user_attrs={"fail_reason": "oom", studies.TRIAL_ATTR: COSTS}
    )
    assert studies.is_finished(failed) and studies.trial_attrs(failed)["fail_reason"] == "oom"
