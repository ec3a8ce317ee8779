"""Processes and threads per machine (`search.capacity`): ``--threads``, the default that splits the
usable cores between workers, and ``--jobs auto`` measured on a short trial."""

from __future__ import annotations

import os
import re

import optuna
import pytest
import torch
from conftest import tiny_space, toml

from search import capacity, spaces
from search import study as studies
from search.tasks import placement, resolve


def _trials(folder, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{folder}/studies/{name}.db")
    return study.trials


def _threads(folder, name: str = "tiny") -> set[int]:
    return {studies.trial_attrs(t)["threads"] for t in _trials(folder, name)}


def test_workers_split_the_cores_unless_threads_says_otherwise(cli, tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=1)))
    cores = capacity.usable_cores()
    split = cli("run", "--space", "tiny.toml", "--trials", "2", "--jobs", "2")
    assert split.returncode == 0, split.stderr
    assert _threads(tmp_path) == {max(1, cores // 2)}  # two workers never take more than the cores

    given = cli("run", "--space", "tiny.toml", "--study", "one", "--trials", "1", "--threads", "1")
    assert given.returncode == 0, given.stderr
    assert _threads(tmp_path, "one") == {1}


def test_jobs_auto_measures_a_trial_and_never_oversubscribes(cli, tmp_path) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=1)))
    space = spaces.load(str(tmp_path / "tiny.toml"))
    task = resolve.resolve(space, data_dir=tmp_path)
    data = placement.load_data(
        task, space, seed=0, device=torch.device("cpu"), mode="resident", data_dir=tmp_path
    )
    before = torch.get_num_threads()
    choice = capacity.choose(task, space, data, torch.device("cpu"), trials=100)
    assert torch.get_num_threads() == before  # the probe leaves this process's threads alone
    cores = capacity.usable_cores()
    assert 1 <= choice.jobs <= cores and choice.jobs * choice.threads <= max(cores, 1)
    assert "threads train a step" in choice.reason or choice.reason == "one usable core"
    few = capacity.choose(task, space, data, torch.device("cpu"), trials=1)
    assert few.jobs == 1  # no more processes than trials

    run = cli("run", "--space", "tiny.toml", "--trials", "2", "--jobs", "auto", "--fuse", "auto")
    assert run.returncode == 0, run.stderr
    line = re.search(
        r"--jobs auto, --fuse auto: .*: (\d+) process(?:es of (\d+) thread)?.*; on the CPU, "
        "trials unfused",
        run.stdout,
    )
    assert line, run.stdout
    jobs = int(line.group(1))
    threads = int(line.group(2) or cores)
    assert jobs * threads <= max(cores, 1)
    assert _threads(tmp_path) == {threads}
    assert (f"on {jobs} workers" if jobs > 1 else "more on cpu") in run.stdout
    assert not any("fused" in studies.trial_attrs(t) for t in _trials(tmp_path))


@pytest.mark.parametrize(
    "limit, expected", [("max 100000", None), ("150000 100000", 1), ("800000 100000", 8)]
)
def test_a_cgroup_quota_caps_the_cores(tmp_path, limit, expected) -> None:
    """A container's CPU quota (cgroup v2 ``cpu.max``) bounds the threads as the cores do."""
    quota = tmp_path / "cpu.max"
    quota.write_text(f"{limit}\n")
    affinity = len(os.sched_getaffinity(0))
    assert capacity.usable_cores(quota) == min(affinity, expected or affinity)
    assert capacity.usable_cores(tmp_path / "missing") == affinity
