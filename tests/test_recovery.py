"""Studies survive their worker being killed: SIGKILL at random moments, then restarts."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import search_command, tiny_space
from optuna.trial import TrialState
from test_dashboard import Dashboard, _search

from search import study as studies

TARGET = 16
# Long enough that the study outlives every kill (each comes at most 1.5 s after a run's first
# checkpoint): 16 trials of about 2-3 s each on 2 cores.
EPOCHS = 30


def _start(cwd: Path, space: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*search_command(), "run", "--space", str(space), "--trials", str(TARGET)]
        + ["--pruner", "none", "--reports-per-epoch", "1", "--heartbeat", "1"],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _saved_since(folder: Path, since_ns: int) -> bool:
    """Whether a checkpoint in ``folder`` was written after ``since_ns``."""
    for path in folder.glob("*.pt*"):
        try:
            if path.stat().st_mtime_ns > since_ns:
                return True
        except FileNotFoundError:
            continue  # a partial file renamed into place meanwhile
    return False


def test_sigkill_at_random_moments_loses_nothing_and_resumes_from_checkpoints(
    tmp_path: Path, write_space
) -> None:
    space = write_space(tiny_space(epochs=EPOCHS))
    rng = random.Random(4)
    checkpoints = tmp_path / "studies" / "checkpoints" / "tiny"
    kills = 0
    for _ in range(4):
        started = time.time_ns()
        process = _start(tmp_path, space)
        # Into the trials whatever the machine's speed: once this run has saved a checkpoint,
        # then at a different moment each time (mid-epoch, mid-write, between trials).
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if _saved_since(checkpoints, started):
                break
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.5))
        if process.poll() is not None:
            break
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    assert kills >= 3

    storage = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    for _ in range(2):
        final = _start(tmp_path, space)
        try:
            _, stderr = final.communicate(timeout=300)
        finally:
            final.kill()  # a no-op once it has exited; never left running after a failure
        assert final.returncode == 0, stderr
        study = optuna.load_study(study_name="tiny", storage=storage)
        if not study.get_trials(states=(TrialState.RUNNING,)):
            break
        time.sleep(4)  # the last killed trial turns stale after 3 heartbeats; the rerun retries it

    study = optuna.load_study(study_name="tiny", storage=storage)
    assert studies.count_finished(study) == TARGET
    assert not study.get_trials(states=(TrialState.RUNNING,))
    print(f"\n  {kills} kills; trials: {_history(study)}")
    resumed = [t for t in study.trials if studies.trial_attrs(t).get("resumed_from_epoch")]
    assert resumed, "no trial continued from a checkpoint"
    for trial in resumed:
        origin = study.trials[studies.trial_attrs(trial)["retry_of"]]
        # Same configuration and seed as the trial it continues.
        assert trial.params == origin.params
        assert studies.trial_attrs(trial)["seed"] == studies.trial_seed(0, origin.number)
        if trial.state == TrialState.COMPLETE:
            assert sorted(trial.intermediate_values) == list(range(1, EPOCHS + 1))
    # Checkpoints are deleted as trials finish: only unfinished trials may keep one.
    left = list((tmp_path / "studies" / "checkpoints" / "tiny").glob("*.pt"))
    unfinished = {t.number for t in study.trials if not studies.is_finished(t)}
    assert {int(p.stem) for p in left} <= unfinished


def _history(study: optuna.Study) -> str:
    """``0:C 1:F 2:C<1@3`` (trial 2 completed trial 1, resumed after epoch 3)."""
    parts = []
    for t in study.trials:
        part = f"{t.number}:{t.state.name[0]}"
        if "retry_of" in studies.trial_attrs(t):
            part += f"<{studies.trial_attrs(t)['retry_of']}@{studies.trial_attrs(t).get('resumed_from_epoch', 0)}"
        parts.append(part)
    return " ".join(parts)


def test_sixteen_workers_and_a_dashboard_on_one_sqlite_file(tmp_path: Path, write_space) -> None:
    space = write_space(tiny_space(epochs=1))
    # The study exists before the dashboard opens it; then 16 workers add 32 trials.
    assert _search(tmp_path, "run", "--space", str(space), "--trials", "1").returncode == 0
    dashboard = Dashboard(tmp_path, "tiny")
    run = subprocess.Popen(
        [*search_command(), "run", "--study", "tiny", "--trials", "33", "--jobs", "16"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    reads = 0
    deadline = time.monotonic() + 400
    try:
        while run.poll() is None and time.monotonic() < deadline:
            status, body = dashboard.get("/api/studies/1")
            assert status == 200 and json.loads(body)["name"] == "tiny"
            reads += 1
            time.sleep(0.05)
        stdout, stderr = run.communicate(timeout=60)
    finally:
        run.kill()  # a no-op once it has exited
        dashboard_stderr = dashboard.stop()
    assert run.returncode == 0, stderr
    assert "locked" not in stderr + dashboard_stderr
    assert "Traceback" not in stderr + dashboard_stderr
    assert "running 32 more on 16 workers" in stdout
    assert reads > 10

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    trials = study.trials
    finished = [t for t in trials if studies.is_finished(t)]
    # Exactly the target finished, none lost, none extra. Workers that reach the boundary in the
    # same instant may each create a trial; the claim lets one run, the rest fail at once as
    # surplus, untrained.
    surplus = [t for t in trials if studies.trial_attrs(t).get("fail_reason") == "surplus"]
    assert len(finished) == 33 and len(finished) + len(surplus) == len(trials)
    assert all("seconds" in studies.trial_attrs(t) for t in finished)
    assert not any("seconds" in studies.trial_attrs(t) for t in surplus)
    # Distinct sampler seeds per worker: no two workers sampled the same configuration.
    assert len({t.params["lr"] for t in finished}) == 33


def test_out_of_memory_fails_the_trial_and_later_ones_in_that_region_skip_training(
    cli, tmp_path: Path, write_space, monkeypatch
) -> None:
    space = tiny_space(epochs=2)
    space["params"]["batch_size"]["choices"] = [32, 64, 128]
    monkeypatch.setenv("SEARCH_FAULT_OOM_BATCH", "128")  # the documented fault hook
    result = cli("run", "--space", str(write_space(space)), "--trials", "12", "--seed", "2")
    assert result.returncode == 0, result.stderr

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    assert studies.count_finished(study) == 12  # out-of-memory trials count as finished
    oom = [t for t in study.trials if studies.trial_attrs(t).get("fail_reason") == "oom"]
    assert oom and all(t.params["batch_size"] == 128 for t in oom)
    assert all(t.state == TrialState.FAIL for t in oom)
    first = oom[0]
    assert studies.trial_attrs(first)["oom_at"] == {
        "batch_size": 128,
        "depth": first.params["depth"],
    }
    assert "oom at epoch 1: batch_size 128" in studies.trial_attrs(first)["fail_detail"]
    # Later trials at least as large skip training: the study remembers what did not fit.
    predicted = [t for t in oom if "as large as OOM trial" in studies.trial_attrs(t)["fail_detail"]]
    assert predicted
    for trial in predicted:
        assert studies.trial_attrs(trial)["fail_detail"].startswith("oom before training")
        assert studies.trial_attrs(trial)["epochs_run"] == 0 and not trial.intermediate_values
    assert all(t.state != TrialState.FAIL for t in study.trials if t.params["batch_size"] < 128)

    report = cli("report", "tiny")
    page = (tmp_path / report.stdout.strip()).read_text()
    assert f"{len(oom)} oom" in page and "oom at epoch 1: batch_size 128" in page


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 KiB tmpfs where the study's checkpoints go (needs root: mount)."""
    folder = tmp_path / "studies" / "checkpoints" / "tiny"
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_during_a_checkpoint_write_is_one_clear_error_and_loses_nothing(
    cli, tmp_path: Path, write_space, small_disk: Path
) -> None:
    space = write_space(tiny_space(epochs=2))
    first = cli("run", "--space", str(space), "--trials", "2", "--pruner", "none")
    # depth-2 CNN checkpoints (weights and optimizer state) outgrow 64 KiB at once
    assert first.returncode == 2, first.stdout + first.stderr
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0], first.stderr
    assert lines[0].startswith("search run: error: checkpoint studies/checkpoints/tiny/")
    assert not [p for p in small_disk.iterdir() if p.name.endswith(".partial")]

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/studies/tiny.db")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert studies.count_finished(study) == 0

    subprocess.run(["umount", str(small_disk)], check=True)
    again = cli("run", "--study", "tiny", "--trials", "2")
    assert again.returncode == 0, again.stderr
    assert studies.count_finished(optuna.load_study(study_name="tiny", storage=study._storage)) == 2


def test_a_read_only_studies_folder_is_one_clear_error_and_changes_nothing(
    cli, tmp_path: Path, write_space
) -> None:
    space = write_space(tiny_space(epochs=1))
    assert cli("run", "--space", str(space), "--trials", "1").returncode == 0
    folder = tmp_path / "studies"
    before = (folder / "tiny.db").read_bytes()
    # A read-only bind mount: read-only even for root, as a permission bit would not be.
    mounted = subprocess.run(
        ["mount", "--bind", str(folder), str(folder)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True)
        for command in (["run", "--study", "tiny", "--trials", "3"], ["list"], ["report", "tiny"]):
            result = cli(*command)
            assert result.returncode == 2, result.stderr
            assert len(result.stderr.strip().splitlines()) == 1
            assert "folder studies is read-only" in result.stderr
    finally:
        subprocess.run(["umount", str(folder)], check=False)
    assert (folder / "tiny.db").read_bytes() == before
