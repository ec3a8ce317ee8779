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
    "bench", "hpo", "--space", "mnist1d-tiny.toml", "--strategies",
    "random+none,random+none:4x,tpe+sha:4x@6", "--seeds", "2", "--trials", "4", "--jobs", "2",
]  # fmt: skip
STRATEGIES = {"random+none": (1, 4), "random+none:4x": (4, 4), "tpe+sha:4x@6": (4, 6)}


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bench")
    (folder / "mnist1d-tiny.toml").write_text(toml(tiny_mnist1d()))
    return folder


def test_bench_runs_every_combination_compares_them_and_resumes(cli, bench_dir: Path) -> None:
    first = cli(*BENCH, cwd=bench_dir)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert sum(bool(re.match(r"\[\d/6\] bench-mnist1d-tiny/", line)) for line in lines) == 6
    assert re.search(
        r"reached random\+none's final accuracy \(0\.\d{4}\) in \d+\.\d\d× its cost", first.stdout
    ) or ("no strategy reached" in first.stdout)
    # The evidence, from the trials of random search that report 4 times per epoch.
    assert "rank agreement with the final result (random+none:4x, 8 trials" in first.stdout
    for epochs in ("0.25", "0.5", "1", "3"):
        assert re.search(rf"^  {re.escape(epochs)} +-?\d\.\d\d \[", first.stdout, re.MULTILINE), (
            epochs
        )
    assert lines[-1] == "report: reports/bench-mnist1d-tiny.html"
    page = (bench_dir / "reports" / "bench-mnist1d-tiny.html").read_text()
    assert "What pruning can save" in page
    # The time-to-target bars name how many seeds reached the target, as the table counts them.
    for strategy in STRATEGIES:
        row = next(line for line in lines if line.startswith(f"{strategy} "))
        reached = re.search(r"  (\d)/2  ", row)
        assert reached is not None, row
        assert f"{strategy} ({reached[1]}/2 seeds)" in page.replace("\\u002f", "/")  # plotly's JSON
    assert page.count("<tr>") == 3 + 1 + 4 + 1  # a row per strategy, per evidence epoch, headers
    # Log axes label their ticks in full: 0.5× is "0.5×", not the bare "5" Plotly would draw.
    assert '"0.5\\u00d7","1\\u00d7","2\\u00d7"' in page

    url = f"sqlite:///{bench_dir / 'studies' / 'bench-mnist1d-tiny.db'}"
    names = sorted(studies.study_names(studies.open_storage(url, create=False)))
    assert names == sorted(f"bench-mnist1d-tiny/{s}/seed{k}" for s in STRATEGIES for k in (0, 1))
    for name in names:
        study = optuna.load_study(study_name=name, storage=url)
        reports, trials = STRATEGIES[name.split("/")[1]]
        assert studies.count_finished(study) == trials
        settings = study.user_attrs[studies.SETTINGS_ATTR]
        assert settings["reports_per_epoch"] == reports
        assert f"{settings['sampler']}+{settings['pruner']}" in name
        for trial in study.trials:  # the pruner's steps count reports: 1 .. 3 epochs × reports
            assert sorted(trial.intermediate_values) == list(
                range(1, len(trial.intermediate_values) + 1)
            )
            assert len(trial.intermediate_values) <= 3 * reports
            attrs = studies.trial_attrs(trial)
            assert attrs["sampling_seconds"] > 0 and attrs["pruning_seconds"] >= 0
        test = hpo.test_record(study)
        assert test["metric"] == "accuracy" and 0.0 <= test["value"] <= 1.0
        # Retrained with the trial's own seed on the same device: the same model again.
        assert test["val_value"] == pytest.approx(test["trial_val_value"], abs=0.02)

    # Seed k of every strategy shares the validation split and trial seeds, and evaluating
    # draws no random numbers: random search reporting 4 times per epoch trains the same models,
    # to the same accuracy at each epoch's end.
    once, often = (
        optuna.load_study(study_name=f"bench-mnist1d-tiny/{s}/seed0", storage=url).trials
        for s in ("random+none", "random+none:4x")
    )
    for a, b in zip(once, often):
        assert a.params == b.params
        quarters = studies.epoch_values(b)
        assert list(quarters)[:4] == [0.25, 0.5, 0.75, 1.0]
        assert studies.epoch_values(a) == {e: quarters[e] for e in (1, 2, 3)}

    again = cli(*BENCH, cwd=bench_dir)
    assert again.returncode == 0, again.stderr
    assert "all done" in again.stdout.splitlines()[0]
    assert again.stdout.splitlines()[1:] == lines[-len(again.stdout.splitlines()) + 1 :]
    changed = cli(*BENCH, "--epochs", "5", cwd=bench_dir)
    assert changed.returncode == 2
    assert "--epochs 5: study bench-mnist1d-tiny/random+none/seed0 was created with --epochs 3" in (
        changed.stderr
    )
    with sqlite3.connect(bench_dir / "studies" / "bench-mnist1d-tiny.db") as db:
        total = sum(2 * trials for _, trials in STRATEGIES.values())
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] == total  # nothing rerun


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--samplers", "random,tpee", "--samplers 'tpee': unknown; choose from tpe, random"),
        ("--pruners", "none,none", "--pruners none,none: a name is repeated"),
        ("--seeds", "0", "--seeds must be at least 1, got 0"),
        ("--strategies", "tpe+sha:4", "--strategies 'tpe+sha:4': not SAMPLER+PRUNER[:Kx][@N]"),
        ("--strategies", "tpe+shaa", "--strategies: 'shaa' is unknown; choose from"),
        ("--trials", "0", "--trials must be at least 1, got 0"),
        ("--space", "nowhere.toml", "nowhere.toml"),
        ("--strategies", "tpe+halving~warm", "a warm start takes the best configurations"),
    ],
)
def test_bad_bench_settings_are_one_line_and_create_nothing(
    cli, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = cli("bench", "hpo", flag, value)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (tmp_path / "studies").exists() and not (tmp_path / "reports").exists()


def test_a_warm_strategy_starts_from_the_other_seeds_of_the_reference() -> None:
    settings = hpo.HpoSettings(
        space="digits", strategies=("random+none", "tpe+halving:4x@60~warm"), seeds=3
    )
    warm = hpo.StrategySpec.parse("tpe+halving:4x@60~warm", 30)
    assert warm.warm and warm.name == "tpe+halving:4x@60~warm"
    sources = hpo._warm_sources(settings, hpo.Combination(warm, 1))
    assert sources == ("bench-digits/random+none/seed0", "bench-digits/random+none/seed2")
    assert hpo._warm_sources(settings, hpo.Combination(hpo.specs(settings)[0], 1)) == ()


def test_time_to_target_charges_the_samplers_own_seconds(tmp_path: Path) -> None:
    """Two strategies whose trials find the same accuracies in the same training seconds; one's
    sampler takes a second per trial. Its cost to the target is twice the other's; its
    training seconds alone are the same."""
    settings = hpo.HpoSettings(
        space=str(tmp_path / "synthetic.toml"), strategies=("random+none", "gp+none"), seeds=3
    )
    (tmp_path / "synthetic.toml").write_text(toml(tiny_mnist1d()))  # names the studies only
    url = f"sqlite:///{tmp_path / 'b.db'}"
    storage = studies.open_storage(url, create=True)
    for combination in hpo.combinations(settings):
        study = optuna.create_study(
            storage=storage,
            study_name=combination.study_name(settings.prefix),
            direction="maximize",
        )
        study.set_user_attr(studies.SETTINGS_ATTR, {"epochs": 1, "task": "t", "model": "m"})
        sampling = 1.0 if combination.spec.sampler == "gp" else 0.0
        for number in range(6):
            accuracy = 0.5 + 0.1 * ((number + combination.seed) % 4)
            attrs = {"seconds": 1.0, "sampling_seconds": sampling, "pruning_seconds": 0.0}
            study.add_trial(
                optuna.trial.create_trial(
                    value=accuracy,
                    intermediate_values={1: accuracy},
                    user_attrs={studies.TRIAL_ATTR: {**attrs, "epochs_run": 1}},
                )
            )
    comparison = hpo.compare(settings, url)
    slow = next(s for s in comparison.strategies if s.name == "gp+none")
    assert slow.to_target.ratio.value == pytest.approx(2.0)
    assert slow.to_target_training.ratio.value == pytest.approx(1.0)
    assert slow.search_seconds == pytest.approx(6.0) and slow.training_seconds == pytest.approx(6.0)
    assert slow.to_target.reached == 1.0
    assert comparison.evidence is not None and comparison.evidence.strategy == "random+none"
