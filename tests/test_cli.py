"""The `search` command in a subprocess, on real SQLite files in a temporary working directory."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import search_command, tiny_space
from tasks.formats import write_mnist

from search import study as studies


def _load(tmp_path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'studies' / name}.db")


def _one_error_line(result, says: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "error" in lines[0] and says in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_run_resume_list_show(cli, tmp_path, write_space) -> None:
    space = write_space(tiny_space())
    first = cli("run", "--space", str(space), "--trials", "3", "--seed", "1")
    assert first.returncode == 0, first.stderr
    assert "created study tiny" in first.stdout
    assert first.stdout.count("COMPLETE") + first.stdout.count("PRUNED") >= 3
    assert "best: " in first.stdout and "database: sqlite:///studies/tiny.db" in first.stdout
    study = _load(tmp_path, "tiny")
    assert len(study.trials) == 3 and studies.count_finished(study) == 3
    assert all(  # by default, 4 reports per epoch
        len(t.intermediate_values) == 4 * studies.trial_attrs(t)["epochs_run"] for t in study.trials
    )
    assert study.user_attrs[studies.SETTINGS_ATTR]["sampler"] == "tpe"
    assert study.user_attrs[studies.ENVIRONMENT_ATTR]["versions"]["optuna"] == optuna.__version__

    # Resume with only the study name: stored space and settings, 2 more trials.
    second = cli("run", "--study", "tiny", "--trials", "5")
    assert second.returncode == 0, second.stderr
    assert "resuming study tiny: 3 of 5 trials finished, running 2 more" in second.stdout
    study = _load(tmp_path, "tiny")
    assert [t.number for t in study.trials] == [0, 1, 2, 3, 4]

    # Naming the same space again is fine: it is compared with the stored one, key by key.
    third = cli("run", "--study", "tiny", "--space", str(space), "--trials", "5")
    assert third.returncode == 0 and "nothing to run" in third.stdout
    assert len(_load(tmp_path, "tiny").trials) == 5

    listing = cli("list")
    assert listing.returncode == 0
    assert (
        listing.stdout.startswith("tiny  5 finished")
        and "sqlite:///studies/tiny.db" in listing.stdout
    )

    shown = cli("show", "tiny")
    assert shown.returncode == 0, shown.stderr
    best = _load(tmp_path, "tiny").best_trial
    assert f"best    trial {best.number}  val_acc {best.value:.4f}" in shown.stdout
    assert f"lr = {best.params['lr']}" in shown.stdout
    assert "tpe sampler, sha pruner (4 reports per epoch), seed 1" in shown.stdout


def test_resuming_with_a_changed_space_or_setting_is_refused(cli, tmp_path, write_space) -> None:
    space = write_space(tiny_space(epochs=1))
    assert cli("run", "--space", str(space), "--trials", "1").returncode == 0
    before = (tmp_path / "studies" / "tiny.db").read_bytes()

    changed = tiny_space(epochs=1)
    changed["params"]["lr"]["high"] = 0.5
    other = write_space(changed, name="tiny2")
    result = cli("run", "--study", "tiny", "--space", str(other), "--trials", "2")
    _one_error_line(result, "params.lr.high: differs from the space study tiny was created with")

    _one_error_line(
        cli("run", "--study", "tiny", "--sampler", "random", "--trials", "2"),
        "created with --sampler tpe",
    )
    _one_error_line(
        cli("run", "--study", "tiny", "--epochs", "3", "--trials", "2"), "created with --epochs 1"
    )
    assert (tmp_path / "studies" / "tiny.db").read_bytes() == before


def test_diverging_trials_fail_with_a_reason_and_count_as_finished(
    cli, tmp_path, write_space
) -> None:
    space = write_space(
        {
            "task": {"name": "digits", "model": "mlp", "epochs": 5},
            "params": {
                "lr": {"type": "float", "low": 1e3, "high": 1e4, "log": True},
                "optimizer": {"type": "categorical", "choices": ["sgd"]},
                "momentum": {"type": "categorical", "choices": [0.9]},
                "batch_size": {"type": "categorical", "choices": [64]},
                "depth": {"type": "int", "low": 2, "high": 3},
            },
        },
        name="diverge",
    )
    result = cli("run", "--space", str(space), "--trials", "2")
    assert result.returncode == 0, result.stderr
    assert "2 finished (0 complete, 0 pruned, 2 failed: 2 diverged)" in result.stdout
    study = _load(tmp_path, "diverge")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    for t in study.trials:
        # Stopped at the report whose loss was NaN (4 per epoch), not after all five epochs.
        epoch = studies.trial_attrs(t)["epochs_run"]
        assert studies.trial_attrs(t)["fail_reason"] == "diverged" and epoch < 5
        assert len(t.intermediate_values) == round(4 * epoch) - 1
        text = studies.epochs_text(epoch)
        assert f"#{t.number:<4} FAIL     diverged at epoch {text}: train loss nan" in result.stdout
    assert studies.count_finished(study) == 2


def test_mnist_from_a_data_dir(cli, tmp_path, write_space) -> None:
    write_mnist(tmp_path / "data", "MNIST", n_train=300, n_test=50)
    space = tiny_space(name="mnist", epochs=1)
    space["params"]["depth"] = {"type": "categorical", "choices": [1]}
    result = cli(
        "run", "--space", str(write_space(space, name="m")), "--trials", "1", "--data-dir", "data"
    )
    assert result.returncode == 0, result.stderr
    trial = _load(tmp_path, "m").trials[0]
    assert studies.trial_attrs(trial)["epochs_run"] == 1
    # 10 % of 300 images validate; the rest train, in full batches of 64 or 128: 4 reports
    assert len(trial.intermediate_values) == 4


def _no_study_files(tmp_path: Path) -> bool:
    folder = tmp_path / "studies"
    return not folder.exists() or not any(folder.iterdir())


BAD_RUNS = [
    (["--trials", "-1"], "--trials must be 0 (create only) or more, got -1"),
    (["--trials", "x"], "argument --trials: invalid int value: 'x'"),
    (["--trials", "5", "--sampler", "bayes"], "argument --sampler: invalid choice: 'bayes'"),
    (["--trials", "5", "--pruner", "asha"], "argument --pruner: invalid choice: 'asha'"),
    (["--trials", "5", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--trials", "5", "--seed", "-1"], "--seed must be in 0..4294967295, got -1"),
    (["--trials", "5", "--jobs", "0"], "--jobs must be at least 1 or auto, got 0"),
    (["--trials", "5", "--jobs", "many"], "'many' is not a number of processes or auto"),
    (["--trials", "5", "--threads", "0"], "--threads must be at least 1, got 0"),
    (["--trials", "5", "--fuse", "0"], "--fuse must be at least 1 or auto, got 0"),
    (["--trials", "5", "--fuse", "all"], "'all' is not a number of trials or auto"),
    (["--trials", "5", "--step", "graph"], "argument --step: invalid choice: 'graph'"),
    (["--trials", "5", "--heartbeat", "0"], "--heartbeat must be at least 1 second, got 0"),
    (["--trials", "5", "--gpus", "a,b"], "argument --gpus: 'a,b' is not a list of GPU numbers"),
    (["--trials", "5", "--space", "nope"], "no space named 'nope'"),
    (["--trials", "5", "--space", "missing.toml"], "space file missing.toml does not exist"),
    (["--trials", "5", "--study", "../x"], "study name '../x'"),
    (["--trials", "5", "--storage", "studies/x.db"], "not a storage URL"),
    (
        ["--trials", "5", "--storage", "postgresql://u@127.0.0.1:1/db"],
        "storage postgresql://u@127.0.0.1:1/db",
    ),
    (["--trials", "5", "--space", "mnist", "--data-dir", "empty"], "MNIST data not found in empty"),
    (["--trials", "5", "--device", "tpu"], "--device 'tpu'"),
    (["--trials", "5", "--tirals", "3"], "unrecognized argument --tirals; did you mean --trials?"),
    (["--tirals", "3"], "unrecognized argument --tirals; did you mean --trials?"),
    (["--trials", "5", "--sampler=bayes"], "argument --sampler: invalid choice: 'bayes'"),
]


@pytest.mark.parametrize(("args", "says"), BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_input_is_one_line_exit_2_and_no_study(cli, tmp_path, args, says) -> None:
    _one_error_line(cli("run", *args), says)
    assert _no_study_files(tmp_path)


def test_malformed_space_file_and_batch_too_large(cli, tmp_path, write_space) -> None:
    bad = write_space(
        "[task]\nname = 'digits'\nmodel = 'cnn'\nepochs = 2\n[params.lr]\ntype='float'\nlow=0.1\nhigh=0.01\n"
    )
    _one_error_line(
        cli("run", "--space", str(bad), "--trials", "2"),
        f"{bad}: params.lr: low must be < high, got low=0.1 high=0.01",
    )
    huge = tiny_space()
    huge["params"]["batch_size"]["choices"] = [64, 4096]
    path = write_space(huge, name="huge")
    _one_error_line(
        cli("run", "--space", str(path), "--trials", "2"), "params.batch_size: 4096 exceeds the"
    )
    assert _no_study_files(tmp_path)


def test_a_file_that_is_not_a_database_is_left_alone(cli, tmp_path) -> None:
    (tmp_path / "studies").mkdir()
    junk = tmp_path / "studies" / "digits.db"
    junk.write_bytes(b"not a database at all, " * 100)
    _one_error_line(cli("run", "--trials", "1"), "storage sqlite:///studies/digits.db")
    assert junk.read_bytes() == b"not a database at all, " * 100


def test_show_and_list_of_missing_studies(cli, tmp_path) -> None:
    _one_error_line(cli("show", "ghost"), "no study 'ghost' in studies/ (it has: ")
    assert _no_study_files(tmp_path)
    listing = cli("list")
    assert listing.returncode == 0 and "no studies in studies" in listing.stdout


def test_debug_shows_the_traceback(cli) -> None:
    result = cli("run", "--trials", "-1", "--debug")
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "--trials must be 0 (create only)" in result.stderr


def test_sqlite_file_is_a_real_optuna_database(cli, tmp_path, write_space) -> None:
    assert (
        cli("run", "--space", str(write_space(tiny_space(epochs=1))), "--trials", "2").returncode
        == 0
    )
    with sqlite3.connect(tmp_path / "studies" / "tiny.db") as db:
        states = [row[0] for row in db.execute("select state from trials order by number")]
    assert len(states) == 2 and set(states) <= {"COMPLETE", "PRUNED"}


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_stops_the_trial_and_a_rerun_continues_it_from_its_checkpoint(
    cli, tmp_path, write_space, stop
) -> None:
    space = write_space(tiny_space(epochs=60))
    command = [*search_command(), "run", "--space", str(space), "--trials", "3", "--pruner", "none"]
    process = subprocess.Popen(
        command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    # Stop trial 1 once it has checkpointed an epoch, well before its 60th.
    checkpoint = tmp_path / "studies" / "checkpoints" / "tiny" / "1.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(stop)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert "Resume with: search run --study tiny --trials 3" in stderr

    study = _load(tmp_path, "tiny")
    states = [t.state.name for t in study.trials]
    assert states == ["COMPLETE", "FAIL"]
    assert study.trials[1].user_attrs["fail_reason"] == "interrupted"
    assert studies.count_finished(study) == 1

    resumed = cli("run", "--study", "tiny", "--trials", "3")
    assert resumed.returncode == 0 and "running 2 more" in resumed.stdout
    study = _load(tmp_path, "tiny")
    assert studies.count_finished(study) == 3
    # Trial 1 ran again first, as trial 2: same params, continuing from its last checkpoint.
    retry = study.trials[2]
    assert studies.trial_attrs(retry)["retry_of"] == 1 and retry.params == study.trials[1].params
    assert studies.trial_attrs(retry)["resumed_from_epoch"] >= 1
    assert studies.trial_attrs(retry)["fail_reason"] is None  # not the copied "interrupted"
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    # Every report of the restored epochs, then the rest: 4 per epoch.
    assert sorted(retry.intermediate_values) == list(range(1, 4 * 60 + 1))
    assert not any((tmp_path / "studies" / "checkpoints" / "tiny").iterdir())


def test_an_empty_study_left_by_a_killed_create_is_replaced(cli, tmp_path, write_space) -> None:
    (tmp_path / "studies").mkdir()
    optuna.create_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}")
    result = cli("run", "--space", str(write_space(tiny_space(epochs=1))), "--trials", "1")
    assert result.returncode == 0, result.stderr
    study = _load(tmp_path, "tiny")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert studies.SETTINGS_ATTR in study.user_attrs and len(study.trials) == 1
