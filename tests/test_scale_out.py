"""`search worker` on PostgreSQL: many processes on one study, a killed worker, a restarted server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
from conftest import search_command, tiny_space

from search import study as studies

Trial = optuna.trial.FrozenTrial


def _create(cli, write_space, url: str, name: str, **task) -> None:
    space = write_space(tiny_space(**task))
    created = cli(
        "run", "--study", name, "--storage", url, "--space", str(space), "--pruner", "none",
        "--trials", "0",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert f"study {name} is ready" in created.stdout


def _worker(tmp_path: Path, url: str, name: str, trials: int, *args: str) -> subprocess.Popen:
    # The storage comes from SEARCH_STORAGE, as a job script on a cluster would set it.
    return subprocess.Popen(
        [*search_command(), "worker", "--study", name, "--trials", str(trials), "--heartbeat", "1",
         *args],
        cwd=tmp_path,
        env={**os.environ, "SEARCH_STORAGE": url, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )  # fmt: skip


def _trials(url: str, name: str) -> list[Trial]:
    return optuna.load_study(
        study_name=name, storage=studies.open_storage(url, create=False)
    ).trials


def _check_exact(trials: list[Trial], target: int) -> None:
    counted = [t for t in trials if studies.is_finished(t)]
    assert len(counted) == target
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len({t.number for t in trials}) == len(trials)
    origins = [studies.trial_attrs(t).get("retry_of", t.number) for t in counted]
    assert len(set(origins)) == len(origins)  # no configuration finished twice
    # Anything else failed only as surplus (a start beyond the target) or was retried.
    for t in trials:
        if t.state == optuna.trial.TrialState.FAIL and not studies.is_finished(t):
            assert studies.trial_attrs(t).get("fail_reason") in (
                "surplus",
                "error",
                "interrupted",
                None,
            )


def test_eight_workers_on_four_machines_finish_exactly_the_target(
    cli, write_space, tmp_path: Path, postgres
) -> None:
    url = postgres.database()
    _create(cli, write_space, url, "w8", epochs=2)
    workers = [_worker(tmp_path, url, "w8", 24, "--jobs", "2") for _ in range(4)]
    for worker in workers:
        out, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err
        assert "w8: 24 finished" in out
    _check_exact(_trials(url, "w8"), 24)
    listing = cli("list", "--storage", url)
    assert listing.returncode == 0 and "w8  24 finished" in listing.stdout


def test_a_killed_workers_trial_is_resumed_from_its_checkpoint_by_another(
    cli, write_space, tmp_path: Path, postgres
) -> None:
    url = postgres.database()
    _create(cli, write_space, url, "kill", epochs=25)
    first = _worker(tmp_path, url, "kill", 2)
    checkpoints = tmp_path / "studies" / "checkpoints" / "kill"
    deadline = time.monotonic() + 300
    while True:  # kill it once a running trial has checkpointed an epoch
        assert time.monotonic() < deadline and first.poll() is None
        running = [t for t in _trials(url, "kill") if t.state == optuna.trial.TrialState.RUNNING]
        if running and (checkpoints / f"{running[0].number}.pt").exists():
            break
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed = [t for t in _trials(url, "kill") if t.state == optuna.trial.TrialState.RUNNING]
    assert len(killed) == 1

    second = _worker(tmp_path, url, "kill", 2)
    _, err = second.communicate(timeout=600)
    assert second.returncode == 0, err
    trials = _trials(url, "kill")
    _check_exact(trials, 2)
    retry = next(t for t in trials if studies.trial_attrs(t).get("retry_of") == killed[0].number)
    assert studies.is_finished(retry)
    assert studies.trial_attrs(retry)["resumed_from_epoch"] >= 1
    assert retry.params == killed[0].params
    assert not list(checkpoints.glob("*.pt"))  # finished trials leave no checkpoint behind


def test_workers_reconnect_after_the_database_restarts(
    cli, write_space, tmp_path: Path, postgres
) -> None:
    url = postgres.database()
    _create(cli, write_space, url, "restart", epochs=4)
    workers = [_worker(tmp_path, url, "restart", 12, "--jobs", "2")]
    deadline = time.monotonic() + 300
    while sum(studies.is_finished(t) for t in _trials(url, "restart")) < 2:
        assert time.monotonic() < deadline and workers[0].poll() is None
        time.sleep(0.3)
    postgres.restart()
    assert sum(studies.is_finished(t) for t in _trials(url, "restart")) < 12  # mid-study
    _, err = workers[0].communicate(timeout=600)
    assert workers[0].returncode == 0, err
    _check_exact(_trials(url, "restart"), 12)


def test_worker_refuses_to_create_a_study(cli, postgres) -> None:
    url = postgres.database()
    result = cli("worker", "--study", "nothing", "--storage", url, "--trials", "5")
    assert result.returncode == 2
    assert "no study nothing in postgresql://postgres@127.0.0.1" in result.stderr
    assert "search run --study nothing" in result.stderr


def test_passwords_in_storage_urls_are_never_printed(cli, postgres) -> None:
    url = postgres.database().replace("postgres@", "postgres:s3cret-pw@")  # trust auth ignores it
    result = cli("worker", "--study", "nothing", "--storage", url, "--trials", "5")
    assert result.returncode == 2 and "s3cret-pw" not in result.stderr + result.stdout
    assert "postgres:***@" in result.stderr
    broken = cli("list", "--storage", "postgresql://u:s3cret-pw@127.0.0.1:1/x")
    assert broken.returncode == 2 and "s3cret-pw" not in broken.stderr, broken.stderr


def test_every_command_takes_the_storage_from_the_environment(cli, write_space, postgres) -> None:
    url = postgres.database()
    _create(cli, write_space, url, "env", epochs=1)
    for command in (["list"], ["show", "env"], ["best", "env"], ["report", "env"]):
        result = cli(*command, env={"SEARCH_STORAGE": url})
        assert result.returncode == 0, (command, result.stderr)
    assert "env  0 finished" in cli("list", env={"SEARCH_STORAGE": url}).stdout


def test_bench_workers_measures_sqlite_and_postgres_side_by_side(cli, postgres) -> None:
    url = postgres.database()
    result = cli(
        "bench", "workers", "--storage", url, "--workers", "1,2", "--trials", "4",
        "--trial-seconds", "0.3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "synthetic objective" in lines[0]
    header, one, two = lines[-3:]
    assert header.split() == [
        "workers", "sqlite", "trials/min", "sqlite", "speed-up", "sqlite", "efficiency",
        "postgresql", "trials/min", "postgresql", "speed-up", "postgresql", "efficiency",
    ]  # fmt: skip
    assert one.split()[0] == "1" and one.split()[2] == "1.00×" and two.split()[0] == "2"
    # One worker sleeping 0.3 s a trial cannot beat 200 trials/min; both backends measured it.
    assert 0 < float(one.split()[1]) <= 200 and 0 < float(one.split()[4]) <= 200
    storage = studies.open_storage(url, create=False)
    assert studies.study_names(storage) == []  # the measuring studies are gone from PostgreSQL
