from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from conftest import tiny_space

from search import spaces, tasks
from search import study as studies
from search.errors import SettingsError, StorageError, TrialFailure
from search.objective import Objective
from search.tasks import resolve
from search.tasks.data import DeviceData


def test_default_storage_is_one_sqlite_file_per_study() -> None:
    assert studies.default_url("mnist-a") == "sqlite:///studies/mnist-a.db"
    assert studies.sqlite_path("sqlite:///studies/mnist-a.db") == Path("studies/mnist-a.db")
    assert studies.sqlite_path("postgresql://u:p@host/db") is None


@pytest.mark.parametrize("name", ["", "../evil", "a/b", "-x", "with space"])
def test_study_names_that_cannot_name_a_file_are_refused(name: str) -> None:
    with pytest.raises(SettingsError, match="study name"):
        studies.default_url(name)


def test_opening_a_missing_sqlite_file_to_read_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(StorageError, match=f"no study database at {path}"):
        studies.open_storage(f"sqlite:///{path}", create=False)
    assert not path.exists()


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("studies/x.db", "not a storage URL"),
        ("sqlite:////no/such/folder/x.db", "folder /no/such/folder does not exist"),
        (
            "postgresql://user:secret@127.0.0.1:1/db",
            "storage postgresql://user:***@127.0.0.1:1/db:",
        ),
        ("nosuchdb://host/db", "storage nosuchdb://host/db:"),
    ],
)
def test_bad_or_unreachable_storage_is_one_clear_error(url: str, says: str) -> None:
    with pytest.raises(StorageError) as e:
        studies.open_storage(url, create=True)
    assert says in str(e.value)
    assert "secret" not in str(e.value)


@pytest.mark.parametrize("name", studies.SAMPLERS)
def test_every_sampler_samples_the_shipped_space(name: str) -> None:
    space = spaces.load("digits")
    sampler = studies.make_sampler(name, seed=0, conditional=space.has_conditions)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        # A smooth stand-in for accuracy, so model-based samplers have something to fit.
        study.tell(trial, -abs(params["lr"] - 0.01) - params["depth"] * 1e-3)
    assert len(study.trials) == 12


def test_same_seed_samples_the_same_configurations() -> None:
    space = spaces.load("digits")

    def sample(seed: int) -> list[dict]:
        study = optuna.create_study(sampler=studies.make_sampler("tpe", seed, conditional=True))
        out = []
        for _ in range(15):
            trial = study.ask()
            out.append(space.suggest(trial))
            study.tell(trial, float(len(out) % 4))
        return out

    assert sample(3) == sample(3) != sample(4)


@pytest.mark.parametrize("name", studies.PRUNERS)
def test_every_pruner_builds(name: str) -> None:
    assert isinstance(studies.make_pruner(name, epochs=10), optuna.pruners.BasePruner)


def test_unknown_sampler_and_pruner() -> None:
    with pytest.raises(
        SettingsError, match="--sampler 'bayes': unknown; choose one of tpe, random"
    ):
        studies.make_sampler("bayes", 0)
    with pytest.raises(SettingsError, match="--pruner 'asha': unknown"):
        studies.make_pruner("asha", 10)


def test_trial_seeds_are_deterministic_and_distinct() -> None:
    seeds = [studies.trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000
    assert seeds[:3] == [studies.trial_seed(0, n) for n in range(3)]
    assert studies.trial_seed(1, 0) != seeds[0]


def test_only_configuration_failures_count_as_finished(tmp_path: Path) -> None:
    storage = studies.open_storage(f"sqlite:///{tmp_path / 's.db'}", create=True)
    study = optuna.create_study(storage=storage, study_name="s")
    study.tell(study.ask(), 1.0)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    diverged = study.ask()
    diverged.set_user_attr("fail_reason", "diverged")
    study.tell(diverged, state=optuna.trial.TrialState.FAIL)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # a crash: still to do
    study.ask()  # running
    assert studies.count_finished(study) == 3


def test_environment_records_versions_and_device() -> None:
    env = studies.environment(torch.device("cpu"))
    assert torch.__version__.startswith(env["versions"]["torch"])
    assert env["versions"]["optuna"] == optuna.__version__
    assert env["device"] == "cpu" and env["cuda"] is None


# The objective, in process, on a real SQLite study.


@pytest.fixture(scope="module")
def digits_data() -> DeviceData:
    split = tasks.get("digits").load(None, False, True)
    return DeviceData.from_split(split, val_fraction=0.25, seed=0, device=torch.device("cpu"))


def _objective(space_path: Path, data: DeviceData, epochs: int = 3) -> Objective:
    space = spaces.load(space_path)
    return Objective(space, resolve.resolve(space), data, epochs=epochs, seed=0)


def test_a_bad_configuration_is_pruned_and_costs_are_recorded(
    tmp_path, write_space, digits_data
) -> None:
    objective = _objective(write_space(tiny_space()), digits_data, epochs=4)
    storage = studies.open_storage(f"sqlite:///{tmp_path / 'p.db'}", create=True)
    study = optuna.create_study(
        storage=storage,
        study_name="p",
        direction="maximize",
        pruner=studies.make_pruner("median", 4),
    )
    good = {"lr": 0.01, "batch_size": 64, "optimizer": "adam", "weight_decay": 1e-5, "depth": 2}
    bad = {
        "lr": 1e-3,
        "batch_size": 128,
        "optimizer": "sgd",
        "momentum": 0.0,
        "weight_decay": 1e-5,
        "depth": 1,
    }
    for _ in range(3):  # the median pruner's startup trials
        study.enqueue_trial(good)
    study.enqueue_trial(bad)
    study.optimize(objective, n_trials=4, catch=(TrialFailure,))

    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert trials[0].value == max(trials[0].intermediate_values.values()) > 0.9
    pruned = trials[-1]
    assert studies.trial_attrs(pruned)["epochs_run"] == len(pruned.intermediate_values) < 4
    for t in trials:
        attrs = studies.trial_attrs(t)
        assert len(attrs["epoch_seconds"]) == len(attrs["images_per_second"]) == attrs["epochs_run"]
        assert attrs["param_count"] > 0 and attrs["peak_memory_mb"] > 0 and attrs["device"] == "cpu"
        assert attrs["seed"] == studies.trial_seed(0, t.number)


def test_a_trial_killed_before_its_first_heartbeat_is_not_running_forever(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'h.db'}"
    plain = optuna.create_study(storage=studies.open_storage(url, create=True), study_name="h")
    plain.ask()  # RUNNING, and no heartbeat ever recorded: its worker "died" at once
    study = optuna.load_study(
        study_name="h", storage=studies.open_storage(url, create=False, heartbeat=1)
    )
    studies.requeue_unfinished(study)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING  # within the grace period
    time.sleep(3.5)
    studies.requeue_unfinished(study)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.WAITING]
    assert studies.original_number(study.trials[1]) == 0


def _open_at_the_barrier(url: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        studies.open_storage(url, create=True)
    except StorageError as e:
        errors.put(str(e))


def test_many_processes_opening_one_new_sqlite_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Optuna creates the schema on first open; unserialized, one opener in a few dozen rounds
    lost the race ("database is locked", "table alembic_version already exists")."""
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for round_ in range(10):
        barrier = context.Barrier(6)
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        openers = [
            context.Process(target=_open_at_the_barrier, args=(url, barrier, errors))
            for _ in range(6)
        ]
        for opener in openers:
            opener.start()
        for opener in openers:
            opener.join(timeout=120)
        assert [opener.exitcode for opener in openers] == [0] * 6
        assert errors.empty(), errors.get()
        assert studies.study_names(studies.open_storage(url, create=False)) == []


def test_worker_devices_and_threads() -> None:
    from search import workers

    assert workers.devices(None, [], 3) == [None, None, None]
    assert workers.devices(None, [0, 1], 5) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    with pytest.raises(SettingsError, match="--device cpu and --gpus"):
        workers.devices("cpu", [0], 2)
    from search import capacity

    cores = capacity.usable_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    # Workers split the usable cores, at least one thread each; --threads overrides.
    assert capacity.threads_per_worker(1) == cores
    assert capacity.threads_per_worker(64) == 1
    assert capacity.threads_per_worker(2) * 2 <= max(cores, 2)
    assert capacity.threads_per_worker(64, threads=3) == 3
    with pytest.raises(SettingsError, match="--threads must be at least 1, got 0"):
        capacity.threads_per_worker(1, threads=0)


def test_sampler_seeds_differ_by_worker_and_by_resume() -> None:
    seeds = {studies.sampler_seed(0, w, n) for w in range(16) for n in (0, 10, 100)}
    assert len(seeds) == 48
    assert studies.sampler_seed(0, 0, 0) == studies.sampler_seed(0, 0, 0)


def test_state_counts_name_a_failure_without_a_reason_an_error() -> None:
    """A retry killed between clearing its inherited reason (None) and recording its own."""
    from optuna.trial import TrialState, create_trial

    from search.summary import state_counts

    study = optuna.create_study()
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": None}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "diverged"}))
    study.add_trial(create_trial(state=TrialState.FAIL))
    assert state_counts(study) == "1 finished (0 complete, 0 pruned, 3 failed: 1 diverged, 2 error)"


def _quadratic(trial: optuna.Trial) -> float:
    return (trial.suggest_float("x", -1, 1) - 0.3) ** 2 + trial.suggest_int("n", 0, 3)


def test_tpe_alone_samples_as_with_its_liar_and_lies_once_another_trial_runs(
    tmp_path: Path,
) -> None:
    def sampled(name: str, sampler: optuna.samplers.BaseSampler) -> list[dict]:
        url = f"sqlite:///{tmp_path / name}.db"
        study = optuna.create_study(storage=url, sampler=sampler, direction="minimize")
        study.optimize(_quadratic, n_trials=16)  # 10 random, then 6 modelled by TPE
        return [t.params for t in study.trials]

    switched = sampled("switched", studies.make_sampler("tpe", 7))
    liar = sampled(
        "liar", optuna.samplers.TPESampler(seed=7, multivariate=True, constant_liar=True)
    )
    assert switched == liar

    # Another worker's trial is running: this trial's TPE lies, and shares its relative params.
    url = f"sqlite:///{tmp_path / 'switched'}.db"
    name = optuna.get_all_study_names(url)[0]
    study = optuna.load_study(study_name=name, storage=url, sampler=studies.make_sampler("tpe", 7))
    elsewhere = study.ask()
    _quadratic(elsewhere)
    here = study.ask()
    _quadratic(here)
    assert study.sampler._constant_liar
    assert any(k.startswith("tpe:relative_params") for k in study.trials[here.number].system_attrs)
    study.tell(elsewhere, 1.0)
    study.tell(here, 1.0)
    alone = study.ask()
    _quadratic(alone)
    assert not study.sampler._constant_liar
    assert not any(k.startswith("tpe:relative") for k in study.trials[alone.number].system_attrs)


def test_hyperband_with_tpe_warns_when_its_brackets_leave_tpe_too_few_trials() -> None:
    settings = {"sampler": "tpe", "pruner": "hyperband", "epochs": 10, "reports_per_epoch": 4}
    # 40 steps: 4 brackets, each started with 4 random trials (a tenth of 30, at least 4).
    assert studies.brackets_short_of_tpe(settings, 30) == (
        "--pruner hyperband: its 4 brackets share the 30 trials, and TPE starts each with 4 "
        "random ones; it models few before 32 trials (--pruner sha has one bracket)"
    )
    assert studies.brackets_short_of_tpe(settings, 100) is None
    assert studies.brackets_short_of_tpe({**settings, "sampler": "random"}, 30) is None
    assert [studies.tpe_startup_trials(n) for n in (None, 10, 30, 60, 200)] == [10, 4, 4, 6, 10]
