"""`search bench hpo` end to end: real studies of MNIST-1D in one SQLite file, then the comparison."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import optuna
import pytest
from conftest import toml

from search import study as studies
from search.bench import hpo


def tiny_mnist1d() -> dict:
    return {
        "task": {"name": "mnist1d", "model": "cnn1d", "epochs": 3, "val_fraction": 0.2},
        "params": {
            "lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
            "batch_size": {"type": "categorical", "choices": [128, 256]},
            "depth": {"type": "int", "low": 1, "high": 2},
        },
    }


BENCH = [
    "bench", "hpo", "--space", "mnist1d-tiny.toml", "--samplers", "random,tpe",
    "--pruners", "none,median", "--seeds", "2", "--trials", "4", "--jobs", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    (folder / "mnist1d-tiny.toml").write_text(toml(tiny_mnist1d()))
    return folder


def test_bench_runs_every_combination_compares_them_and_resumes(cli, bench_dir: Path) -> None:
    first = cli(*BENCH, cwd=bench_dir)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert sum(bool(re.match(r"\[\d/8\] bench-mnist1d-tiny/", line)) for line in lines) == 8
    assert re.search(
        r"reached random\+none's final accuracy \(0\.\d{4}\) in \d+\.\d\d× its", first.stdout
    ) or ("no strategy reached" in first.stdout)
    assert lines[-1] == "report: reports/bench-mnist1d-tiny.html"
    page = (bench_dir / "reports" / "bench-mnist1d-tiny.html").read_text()
    assert page.count("<tr>") == 4 + 1  # a row per strategy and the header

    url = f"sqlite:///{bench_dir / 'studies' / 'bench-mnist1d-tiny.db'}"
    names = sorted(studies.study_names(studies.open_storage(url, create=False)))
    assert names == sorted(
        f"bench-mnist1d-tiny/{s}+{p}/seed{k}"
        for s in ("random", "tpe")
        for p in ("none", "median")
        for k in (0, 1)
    )
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        assert studies.count_finished(study) == 4
        settings = study.user_attrs[studies.SETTINGS_ATTR]
        assert f"{settings['sampler']}+{settings['pruner']}/seed{settings['seed']}" in name
        test = study.user_attrs[hpo.TEST_ACCURACY_ATTR]
        assert 0.0 <= test["accuracy"] <= 1.0
        # Retrained with the trial's own seed on the same device: the same model again.
        assert test["val_accuracy"] == pytest.approx(test["trial_val_accuracy"], abs=0.02)

    # Seed k of every strategy shares the validation split and trial seeds, so random search
    # with and without pruning starts from the same first configuration and the same result.
    firsts = [
        optuna.load_study(study_name=f"bench-mnist1d-tiny/random+{p}/seed0", storage=url).trials[0]
        for p in ("none", "median")
    ]
    assert firsts[0].params == firsts[1].params
    assert firsts[0].intermediate_values == firsts[1].intermediate_values

    again = cli(*BENCH, cwd=bench_dir)
    assert again.returncode == 0, again.stderr
    assert "all done" in again.stdout.splitlines()[0]
    assert again.stdout.splitlines()[-2] == lines[-2]  # the same headline
    changed = cli(*BENCH, "--epochs", "5", cwd=bench_dir)
    assert changed.returncode == 2
    assert "--epochs 5: study bench-mnist1d-tiny/random+none/seed0 was created with --epochs 3" in (
        changed.stderr
    )
    with sqlite3.connect(bench_dir / "studies" / "bench-mnist1d-tiny.db") as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == 8 * 4  # nothing rerun


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--samplers", "random,tpee", "--samplers 'tpee': unknown; choose from tpe, random"),
        ("--pruners", "none,none", "--pruners none,none: a name is repeated"),
        ("--seeds", "0", "--seeds must be at least 1, got 0"),
        ("--trials", "0", "--trials must be at least 1, got 0"),
        ("--space", "nowhere.toml", "nowhere.toml"),
    ],
)
def test_bad_bench_settings_are_one_line_and_create_nothing(
    cli, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = cli("bench", "hpo", flag, value)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "studies").exists() and not (tmp_path / "reports").exists()
