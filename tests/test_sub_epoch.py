"""Reports k times per epoch, end to end: `search run --reports-per-epoch 4` on the tiny digits space,
what the pruner saw, and fractional epochs in the notes, `search show` and the report."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
from conftest import tiny_space, toml

from search import study as studies


def test_a_study_reporting_four_times_per_epoch(cli, tmp_path: Path) -> None:
    (tmp_path / "tiny.toml").write_text(toml(tiny_space(epochs=2)))
    run = cli(
        "run", "--space", "tiny.toml", "--trials", "8", "--pruner", "sha",
        "--reports-per-epoch", "4",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    url = f"sqlite:///{tmp_path / 'studies' / 'tiny.db'}"
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.user_attrs[studies.SETTINGS_ATTR]["reports_per_epoch"] == 4
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    for t in trials:
        # The pruner's steps are reports 1..8; shown, they are epochs 0.25..2.
        steps = sorted(t.intermediate_values)
        assert steps == list(range(1, len(steps) + 1)) and len(steps) <= 8
        curve = studies.epoch_values(t)
        assert list(curve) == [s / 4 for s in steps]
        attrs = studies.trial_attrs(t)
        assert attrs["epochs_run"] == steps[-1] / 4
        assert len(attrs["epoch_seconds"]) == len(steps)
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert len(steps) == 8  # never pruned at the last report: nothing left to save
    # Successive halving's first rung is the first report, a quarter epoch in.
    assert pruned and any(len(t.intermediate_values) < 4 for t in pruned)

    notes = "".join(map(str, study._storage.get_study_system_attrs(study._study_id).values()))
    assert "| 0.25 |" in notes and "| 1.75 |" in notes
    show = cli("show", "tiny")
    assert show.returncode == 0, show.stderr
    assert "sha pruner (4 reports per epoch), seed 0" in show.stdout
    assert re.search(r"pruned at epoch 0\.(25|5|75)\b", show.stdout + run.stdout)
    report = cli("report", "tiny")
    assert report.returncode == 0, report.stderr
    page = (tmp_path / "reports" / "tiny.html").read_text()
    # Learning curves in epochs.
    assert re.search(r'"x":\[0\.25,0\.5,0\.75,1(\.0)?,', page.replace(" ", ""))

    again = cli("run", "--study", "tiny", "--trials", "9", "--reports-per-epoch", "2")
    assert again.returncode == 2
    assert again.stderr.strip().endswith(
        "--reports-per-epoch 2: study tiny was created with --reports-per-epoch 4; a study's "
        "search settings are fixed, start a new study with --study NEW_NAME"
    ), again.stderr
    bad = cli("run", "--space", "tiny.toml", "--study", "other", "--trials", "1",
              "--reports-per-epoch", "0")  # fmt: skip
    assert bad.returncode == 2 and "--reports-per-epoch must be 1 to 100, got 0" in bad.stderr
    assert len(study.get_trials()) == 8
