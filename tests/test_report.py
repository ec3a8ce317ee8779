"""The report page for every shape of study, without a browser (tests/test_browser.py opens it)."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from search import reporting
from search import study as studies
from search.errors import StorageError

PLOTLY_BANNER = "* plotly.js v"
DISTRIBUTIONS = {
    "lr": FloatDistribution(1e-4, 1e-1, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "optimizer": CategoricalDistribution(["sgd", "adam", "rmsprop"]),
    "depth": IntDistribution(1, 4),
}


def _trial(number: int, state: TrialState, epochs: int = 5, **attrs) -> optuna.trial.FrozenTrial:
    """A trial shaped like the objective's: params, per-epoch values and cost user attrs."""
    params = {
        "lr": 10 ** (-4 + 3 * ((number * 37) % 100) / 100),
        "batch_size": [32, 64, 128][number % 3],
        "optimizer": ["sgd", "adam", "rmsprop"][number % 4 % 3],
        "depth": 1 + number % 4,
    }
    run = epochs if state == TrialState.COMPLETE else 1 + number % max(1, epochs - 1)
    curve = {e: min(0.99, 0.3 + 0.1 * e + 0.02 * (number % 7)) for e in range(1, run + 1)}
    if state == TrialState.FAIL:
        curve = {}
    user_attrs = {
        "epochs_run": run,
        "seconds": 0.1 * run,
        "epoch_seconds": [0.1] * len(curve),
        "images_per_second": [1000.0 * params["batch_size"] / 32] * len(curve),
        **attrs,
    }
    return create_trial(
        state=state,
        value=max(curve.values()) if state == TrialState.COMPLETE else None,
        params=params,
        distributions=DISTRIBUTIONS,
        intermediate_values=curve,
        user_attrs=user_attrs,
    )


def _study(name: str, trials: list, tmp_path: Path | None = None) -> tuple[optuna.Study, str]:
    url = f"sqlite:///{tmp_path / (name.replace('/', '_') + '.db')}" if tmp_path else "sqlite://"
    storage = studies.open_storage(url, create=True) if tmp_path else None
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr(
        studies.SETTINGS_ATTR,
        {
            "task": "digits",
            "model": "cnn",
            "sampler": "tpe",
            "pruner": "median",
            "seed": 0,
            "epochs": 5,
            "space_source": "spaces/digits.toml",
            "space_name": "digits",
        },
    )
    study.add_trials(trials)
    return study, url


STATES = [TrialState.COMPLETE, TrialState.PRUNED, TrialState.PRUNED, TrialState.FAIL]
SHAPES = {
    "empty": [],
    "only-failed": [_trial(n, TrialState.FAIL, fail_reason="diverged") for n in range(3)],
    "only-pruned": [_trial(n, TrialState.PRUNED) for n in range(4)],
    "one-complete": [_trial(0, TrialState.COMPLETE)],
    "mixed": [_trial(n, STATES[n % 4]) for n in range(24)],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_of_study_gives_a_whole_page(shape: str) -> None:
    study, url = _study(shape, SHAPES[shape])
    page = reporting.render([reporting.Facts.of(study, url)])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count(PLOTLY_BANNER) == 1  # plotly.js once, whatever the number of charts
    assert "All trials" in page and f"<td>{shape}</td>" in page


def test_mixed_study_draws_every_chart_and_summarizes() -> None:
    study, url = _study("mixed", SHAPES["mixed"])
    facts = reporting.Facts.of(study, url)
    page = reporting.render([facts])
    # history, curves, parallel, importance, slices, 4 comparisons, timeline
    assert page.count("Plotly.newPlot") == 10
    assert "Not enough finished trials" not in page
    assert "24 in all: 18 finished (6 complete, 12 pruned, 6 failed: 6 error)" in page
    # Pruned trials ran fewer than the 5 epochs; each unrun epoch is worth 0.1 s here.
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    expected = sum((5 - studies.trial_attrs(t)["epochs_run"]) * 0.1 for t in pruned)
    assert facts.pruner_saved_seconds == pytest.approx(expected)
    assert f"≈ {expected:.1f} s" in page
    assert f"trial {facts.best.number}: val accuracy {facts.best.value:.4f}" in page


def test_a_study_with_too_little_data_says_so_instead_of_an_empty_chart() -> None:
    study, url = _study("empty", [])
    page = reporting.render([reporting.Facts.of(study, url)])
    assert "Plotly.newPlot" not in page
    assert "Not enough finished trials to draw this yet." in page
    assert "no complete trial yet" in page


def test_one_parameter_space() -> None:
    trials = [
        create_trial(
            value=0.5 + n / 100,
            params={"lr": 10 ** (-3 + n / 10)},
            distributions={"lr": DISTRIBUTIONS["lr"]},
            intermediate_values={1: 0.4, 2: 0.5 + n / 100},
        )
        for n in range(8)
    ]
    study, url = _study("one-param", trials)
    page = reporting.render([reporting.Facts.of(study, url)])
    assert page.count("Plotly.newPlot") >= 5


def test_names_params_and_reasons_are_escaped(tmp_path: Path) -> None:
    evil = "<script>alert('name')</script>"
    failed = _trial(
        1, TrialState.FAIL, fail_reason="error", fail_detail="<img src=x onerror=alert(1)>"
    )
    study, url = _study(evil, [_trial(0, TrialState.COMPLETE), failed], tmp_path)
    page = reporting.render([reporting.Facts.of(study, url)])
    assert evil not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page


def test_several_studies_are_compared_on_one_page(tmp_path: Path) -> None:
    a = _study("a", [_trial(n, STATES[n % 4]) for n in range(8)], tmp_path)
    b = _study("b", [_trial(n, TrialState.COMPLETE) for n in range(5)], tmp_path)
    page = reporting.render([reporting.Facts.of(*a), reporting.Facts.of(*b)])
    assert "Best so far by trial" in page and "Best so far by training time" in page
    assert page.count("<h2 class='study'>") == 2
    assert page.count(PLOTLY_BANNER) == 1


def test_write_is_atomic_and_refuses_a_missing_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    study, url = _study("w", SHAPES["mixed"], tmp_path)
    out = reporting.write([(study, url)], reporting.default_path(["w"]))
    assert out == Path("reports/w.html") and out.read_text().startswith("<!DOCTYPE html>")
    assert not list(Path("reports").glob(".*partial"))
    with pytest.raises(StorageError, match="folder nowhere does not exist"):
        reporting.write([(study, url)], Path("nowhere/w.html"))


def test_a_thousand_trials(capsys) -> None:
    trials = [_trial(n, STATES[n % 4]) for n in range(1000)]
    study, url = _study("big", trials)
    start = time.perf_counter()
    page = reporting.render([reporting.Facts.of(study, url)])
    seconds = time.perf_counter() - start
    assert page.count("Plotly.newPlot") == 10 and page.count("<tr class=") == 1000
    with capsys.disabled():
        print(f"\n  report of 1,000 trials: {seconds:.2f} s, {len(page) / 1e6:.1f} MB")
