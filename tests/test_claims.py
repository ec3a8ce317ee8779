"""The one trial loop at the target: an exact claim under a race, and separate commands on one study."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from conftest import search_command, tiny_space
from optuna.trial import TrialState, create_trial

from search import claims, target
from search import study as studies
from search.bench.workers import SleepObjective

RACERS = 12


def _storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'race.db'}"
        studies.open_storage(url, create=True)
        return url
    return request.getfixturevalue("postgres").database()


def _race(url: str, name: str, target_count: int, start, claimed, results) -> None:
    """One racer: start a trial, wait for every other racer, then all claim in the same instant."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=name, storage=studies.open_storage(url, create=False))
    trial = study.ask()
    start.wait()
    won = claims.claim(study, trial._trial_id, target_count)
    results.put(won)
    claimed.wait()  # every claim is made while the winners' trials are still running
    if won:
        study.tell(trial, 1.0)
    else:
        trial.set_user_attr("fail_reason", "surplus")
        study.tell(trial, state=TrialState.FAIL)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_racing_claims_at_the_boundary_never_overshoot(kind, tmp_path, request) -> None:
    url = _storage_url(kind, tmp_path, request)
    storage = studies.open_storage(url, create=False)
    study = optuna.create_study(storage=storage, study_name="race", direction="maximize")
    # Seven places are taken already (finished trials, a counted failure among them) of ten.
    for value in range(6):
        study.add_trial(create_trial(value=float(value)))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "oom"}))
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"fail_reason": "error"}))
    context = multiprocessing.get_context("spawn")
    start, claimed = context.Barrier(RACERS), context.Barrier(RACERS)
    results = context.Queue()
    racers = [
        context.Process(target=_race, args=(url, "race", 10, start, claimed, results))
        for _ in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=120)
        assert racer.exitcode == 0
    wins = [results.get(timeout=5) for _ in racers]
    assert wins.count(True) == 3 and wins.count(False) == RACERS - 3
    assert claims.counts(study) == claims.Counts(10, 0, 0, 0, 0)
    assert studies.count_finished(study) == 10


def _loop(url: str, name: str, target_count: int) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name=name, storage=studies.open_storage(url, create=False, heartbeat=5)
    )
    study.sampler = studies.make_sampler("tpe", studies.sampler_seed(0, os.getpid(), 0))
    target.run_until_target(study, SleepObjective(0.02), target=target_count, url=url, poll=0.05)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_many_processes_in_the_loop_end_with_exactly_the_target(kind, tmp_path, request) -> None:
    url = _storage_url(kind, tmp_path, request)
    storage = studies.open_storage(url, create=False)
    study = optuna.create_study(storage=storage, study_name="loop", direction="maximize")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_loop, args=(url, "loop", 20)) for _ in range(8)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
        assert process.exitcode == 0
    trials = study.get_trials(deepcopy=False)
    assert sum(studies.is_finished(t) for t in trials) == 20
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    others = [t for t in trials if not studies.is_finished(t)]
    assert all(t.user_attrs.get("fail_reason") == "surplus" for t in others)
    # Every finished trial held a claim: none ran without a place.
    assert all(
        f"{claims.CLAIM_KEY}{t._trial_id}" in t.system_attrs
        for t in trials
        if t.state == TrialState.COMPLETE
    )


@pytest.mark.parametrize("commands", [2, 4])
def test_separate_run_commands_on_one_study_end_with_exactly_the_target(
    commands, tmp_path, write_space
) -> None:
    """Started in the same instant on a study that does not exist yet: one creates it, the others
    join it as a resume, and together they run exactly ``--trials``."""
    space = write_space(tiny_space(epochs=1))
    runs = [
        subprocess.Popen(
            [
                *search_command(),
                "run",
                "--study",
                "shared",
                "--space",
                str(space),
                "--trials",
                "6",
                "--pruner",
                "none",
                "--heartbeat",
                "2",
            ],
            cwd=tmp_path,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(commands)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, err
        assert "shared: " in out
    assert sum("created study shared" in out for out, _ in outputs) == 1
    study = optuna.load_study(
        study_name="shared",
        storage=studies.open_storage(f"sqlite:///{tmp_path / 'studies/shared.db'}", create=False),
    )
    trials = study.get_trials(deepcopy=False)
    assert sum(studies.is_finished(t) for t in trials) == 6
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert all(
        t.user_attrs.get("fail_reason") == "surplus" for t in trials if not studies.is_finished(t)
    )


def test_a_trial_is_written_in_a_handful_of_writes(tmp_path, write_space) -> None:
    """What one complete trial writes: one user attr of costs, its note (two study attrs), its
    claim, one row per param and per epoch; and what `search show` reads back from them."""
    from search import spaces, summary
    from search.objective import Objective
    from search.tasks import placement, resolve
    from search.train import pick_device

    space = spaces.load(write_space(tiny_space(epochs=3)))
    task = resolve.resolve(space)
    data = placement.load_data(task, space, seed=0, device=pick_device("cpu"), mode="resident")
    url = f"sqlite:///{tmp_path / 'writes.db'}"
    storage = studies.open_storage(url, create=True, heartbeat=60)
    study = optuna.create_study(storage=storage, study_name="writes", direction="maximize")
    study.pruner = optuna.pruners.NopPruner()
    inserts: dict[str, int] = {}

    def count(_conn, _cursor, statement: str, *_args) -> None:
        words = statement.split()
        if words[0].upper() == "INSERT":
            inserts[words[2]] = inserts.get(words[2], 0) + 1

    sqlalchemy.event.listen(storage.engine, "before_cursor_execute", count)
    objective = Objective(space, task, data, epochs=3, seed=0)
    target.run_until_target(study, objective, target=1, url=url)
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", count)
    (trial,) = study.trials
    assert trial.state == TrialState.COMPLETE
    assert inserts["trial_user_attributes"] == 1
    assert inserts["study_system_attributes"] == 2  # the note: its version and its one chunk
    assert inserts["trial_system_attributes"] == 1  # the claim
    assert inserts["trial_intermediate_values"] == 3
    assert inserts["trial_params"] == len(trial.params)
    attrs = studies.trial_attrs(trial)
    assert attrs["epochs_run"] == 3 and len(attrs["epoch_seconds"]) == 3 and attrs["seconds"] > 0
    assert "3 epochs" in summary.show(study, url)  # test_dashboard reads the note back over HTTP
