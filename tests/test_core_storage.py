"""`CoreStorage` reads what Optuna's ORM reads and writes what it writes, on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search import study as studies
from search.core_storage import CoreStorage


def _urls(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    """Two new databases of ``kind``."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'core.db'}", f"sqlite:///{tmp_path / 'orm.db'}"
    server = request.getfixturevalue("postgres")
    return server.database(), server.database()


def _fill(storage: optuna.storages.RDBStorage) -> tuple[int, int]:
    """A study with a trial in every state, every kind of param, value and attr, an overwritten
    attr and study system attrs (where notes live); and a two-objective study. Their ids."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.create_study(
        storage=storage,
        study_name="one",
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    for number in range(6):
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-1, log=True)
        trial.suggest_float("dropout", 0.0, 0.5, step=0.1)
        trial.suggest_int("depth", 1, 8)
        trial.suggest_categorical("optimizer", ["sgd", "adam", None, True, 2.5])
        if number % 2:
            trial.suggest_int("width", 16, 256, log=True)  # a conditional param
        trial.set_user_attr("search.trial", {"seconds": 1.5, "epoch_seconds": [0.5, 1.0]})
        trial.set_user_attr("fail_reason", None)
        trial.set_user_attr("fail_reason", "oom" if number == 2 else None)  # overwritten
        trial.storage.set_trial_system_attr(trial._trial_id, f"search:claim:{trial._trial_id}", 1)
        for step, value in enumerate([0.1, math.inf, math.nan, -math.inf][: number + 1], start=1):
            trial.report(value, step)
        storage.set_trial_intermediate_value(trial._trial_id, 1, 0.25)  # a step written again
        if number == 0:
            study.tell(trial, 0.9)
        elif number == 1:
            study.tell(trial, state=TrialState.PRUNED)
        elif number == 2:
            study.tell(trial, state=TrialState.FAIL)
        elif number == 3:
            study.tell(trial, math.inf)
        # 4 and 5 stay running
        storage.set_study_system_attr(study._study_id, f"note:{number}", "draft")
        storage.set_study_system_attr(study._study_id, f"note:{number}", f"| epoch | {number} |")
    study.enqueue_trial({"lr": 0.01, "depth": 3}, user_attrs={"queued": "by hand"})
    pair = optuna.create_study(
        storage=storage,
        study_name="two",
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.RandomSampler(seed=1),
    )
    pair.optimize(lambda t: (t.suggest_float("x", 0, 1), -math.inf), n_trials=3)
    return study._study_id, pair._study_id


def _comparable(trial: FrozenTrial, times: bool = True) -> str:
    """Every field of ``trial``, NaN equal to NaN (repr), dicts in key order (the ORM's order
    of a trial's attrs is the database's, which no reader relies on)."""
    fields = {
        name: sorted(value.items(), key=lambda item: repr(item[0]))
        if isinstance(value, dict)
        else value
        for name, value in vars(trial).items()
        if times or "datetime" not in name
    }
    return repr(fields)


def _same(ours: list[FrozenTrial], theirs: list[FrozenTrial], times: bool = True) -> bool:
    return [_comparable(t, times) for t in ours] == [_comparable(t, times) for t in theirs]


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_core_storage_reads_and_writes_as_optuna_does(kind, tmp_path, request) -> None:
    core_url, orm_url = _urls(kind, tmp_path, request)
    core = studies.open_storage(core_url, create=True)
    assert isinstance(core, CoreStorage) and core._core  # the Core calls, not the fallback
    ids = _fill(core)
    # The same study written by Optuna's own storage: every row the same, but for the times.
    plain = optuna.storages.RDBStorage(orm_url)
    assert _fill(plain) == ids
    reread = optuna.storages.RDBStorage(core_url)  # Optuna's own reads of what Core wrote
    for study_id in ids:
        assert _same(reread.get_all_trials(study_id), plain.get_all_trials(study_id), times=False)
        assert reread.get_study_system_attrs(study_id) == plain.get_study_system_attrs(study_id)

    # And what Core reads is what Optuna's reads return, from the same database.
    for study_id in ids:
        everything = reread.get_all_trials(study_id)
        assert len(everything) >= 3
        assert _same(core.get_all_trials(study_id), everything)
        for trial in everything:
            assert _same([core.get_trial(trial._trial_id)], [trial])
        # The incremental reads Optuna's trial cache makes: newer trials, plus unfinished ones.
        first = everything[0]._trial_id
        for states in [None, (TrialState.COMPLETE,), (TrialState.RUNNING, TrialState.WAITING)]:
            for included, greater_than in [(set(), -1), ({first + 1}, first + 2), (set(), first)]:
                assert _same(
                    core._get_trials(study_id, states, included, greater_than),
                    reread._get_trials(study_id, states, included, greater_than),
                ), (states, included, greater_than)
    assert any(t.state == TrialState.WAITING for t in core.get_all_trials(ids[0]))
    assert core._get_trials(ids[0], None, set(), 10**9) == []


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_core_storage_refuses_what_optuna_refuses(kind, tmp_path, request) -> None:
    core = studies.open_storage(_urls(kind, tmp_path, request)[0], create=True)
    study_id = _fill(core)[0]
    trials = core.get_all_trials(study_id)
    finished = next(t for t in trials if t.state == TrialState.COMPLETE)._trial_id
    running = next(t for t in trials if t.state == TrialState.RUNNING)._trial_id
    lr = FloatDistribution(1e-5, 1e-1, log=True)
    with pytest.raises(UpdateFinishedTrialError):
        core.set_trial_user_attr(finished, "late", 1)
    with pytest.raises(UpdateFinishedTrialError):
        core.set_trial_system_attr(finished, "late", 1)
    with pytest.raises(UpdateFinishedTrialError):
        core.set_trial_param(finished, "late", 0.5, lr)
    with pytest.raises(UpdateFinishedTrialError):
        core.set_trial_intermediate_value(finished, 9, 0.5)
    # A name keeps its distribution across the study's trials (a fresh process has no cache).
    with pytest.raises(ValueError, match="different distribution"):
        studies.open_storage(core.url, create=False).set_trial_param(
            running, "lr", 1.0, IntDistribution(1, 8)
        )
    for call in [
        lambda: core.get_trial(10**9),
        lambda: core.get_all_trials(10**9),
        lambda: core.set_trial_user_attr(10**9, "key", 1),
        lambda: core.set_trial_param(10**9, "lr", 0.5, lr),
        lambda: core.set_trial_intermediate_value(10**9, 1, 0.5),
        lambda: core.set_study_system_attr(10**9, "key", 1),
    ]:
        with pytest.raises(KeyError):
            call()
    assert core.get_trial(running).state == TrialState.RUNNING  # nothing half-written
    assert "late" not in core.get_trial(finished).user_attrs
    assert 9 not in core.get_trial(finished).intermediate_values


def test_core_heartbeats_are_what_optunas_stale_check_reads(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'beats.db'}"
    storage = studies.open_storage(url, create=True, heartbeat=1)  # stale after 3 s
    study = optuna.create_study(storage=storage, study_name="beats")
    trial_id = study.ask()._trial_id
    storage.record_heartbeat(trial_id)
    assert storage._get_stale_trial_ids(study._study_id) == []
    time.sleep(4.5)  # CURRENT_TIMESTAMP has whole seconds on SQLite
    assert storage._get_stale_trial_ids(study._study_id) == [trial_id]
    storage.record_heartbeat(trial_id)  # the same row, brought up to date
    assert storage._get_stale_trial_ids(study._study_id) == []
    with optuna.storages.RDBStorage(url).engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT trial_id FROM trial_heartbeats").all()
    assert rows == [(trial_id,)]
