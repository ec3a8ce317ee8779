"""Successive halving that pauses and promotes (`--pruner halving`): rungs filled and decided
once, promoted trials going on from their paused state and the rest never training again, across
a kill -9 and two workers; the noise rule; the sampler fit on rungs; warm starts; the views."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
from conftest import search_command, toml

from search import promotion, reporting, rungs
from search import study as studies
from search.rungs import Candidate, Noise

# Known curves: configuration x reaches x × step / epochs; its loss is 1 - x. The function logs
# where each call started (1, or the step after its restored checkpoint), so the test sees who
# trained what.
CURVES_PY = """
import json, os, time


def train(params, report):
    x = params["x"]
    start = 1 if report.restored is None else report.restored["step"] + 1
    with open(os.environ["CALLS"], "a") as log:
        log.write(json.dumps({"x": x, "start": start, "trial": report.trial}) + "\\n")
    for step in range(start, report.epochs + 1):
        time.sleep(float(os.environ.get("STEP_SECONDS", "0")))
        report(step, x * step / report.epochs, loss=1 - x)
        report.checkpoint({"step": step})
    return x
"""
XS = [0.1, 0.9, 0.3, 0.7, 0.5, 0.2, 0.8, 0.4, 0.6]  # the nine configurations, enqueued in order


def _study_folder(tmp_path: Path, epochs: int = 9) -> Path:
    (tmp_path / "curves.py").write_text(CURVES_PY)
    space = {
        "task": {"train": "curves.py:train", "epochs": epochs, "direction": "maximize"},
        "params": {"x": {"type": "categorical", "choices": XS}},
    }
    (tmp_path / "curves.toml").write_text(toml(space))
    return tmp_path


def _create(
    folder: Path, cli, trials: int = 9, pruner: str = "halving", url: str | None = None
) -> None:
    """The study, created with its nine configurations queued in the order of XS."""
    if url is None:
        (folder / "studies").mkdir(exist_ok=True)
        url = "sqlite:///" + str(folder / "studies/h.db")
    done = cli(
        "run",
        *("--space", "curves.toml", "--study", "h", "--storage", url, "--trials", "0"),
        *("--sampler", "random", "--pruner", pruner),
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="h", storage=url)
    for x in XS[:trials]:
        study.enqueue_trial({"x": x})


def _run(folder: Path, cli, trials: int) -> str:
    """`search run` on the study to ``trials``; its output."""
    done = cli(
        "run",
        "--study",
        "h",
        "--trials",
        str(trials),
        cwd=folder,
        env={"CALLS": str(folder / "calls.jsonl")},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _load(folder: Path, url: str | None = None) -> optuna.Study:
    return optuna.load_study(
        study_name="h", storage=url or "sqlite:///" + str(folder / "studies/h.db")
    )


def _check_promotions(study: optuna.Study, calls: list[dict]) -> None:
    """Rungs at steps 1 and 3 of 9: the top 3 of 9 went on from step 1, the best of those from
    step 3; nobody else trained after pausing; the study holds nine configurations."""
    decisions = promotion.decisions(study)
    assert sorted(decisions) == ["search:rung:0:0", "search:rung:0:1"]
    trials = study.get_trials(deepcopy=False)
    x_of = {t.number: t.params.get("x") for t in trials}  # a surplus trial has none
    first, second = decisions["search:rung:0:0"], decisions["search:rung:0:1"]
    assert sorted(x_of[n] for n in first["promoted"]) == [0.7, 0.8, 0.9]
    assert [x_of[n] for n in second["promoted"]] == [0.9]
    starts = {}
    for call in calls:
        starts.setdefault(call["x"], []).append(call["start"])
    for x in XS:
        # A crash retry may start again from any checkpoint; a continuation from the pause.
        later = [s for s in starts[x] if s > 1]
        if x == 0.9:
            assert {2, 4} <= set(later)
        elif x in (0.7, 0.8):
            assert 2 in later and max(later) <= 3
        else:
            assert later == []  # never trained again after its pause at step 1
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert [t.params["x"] for t in complete] == [0.9]
    # Its last trial reports the whole curve; the views show each configuration once (and a
    # crashed attempt that was retried as a failed trial, as without halving).
    assert sorted(complete[0].intermediate_values) == list(range(1, 10))
    shown = [t for t in studies.shown(trials) if t.state != optuna.trial.TrialState.FAIL]
    assert sorted(t.params["x"] for t in shown) == sorted(XS)
    assert studies.count_finished(study) == 9


def test_a_rung_fills_and_its_top_third_goes_on_from_where_it_paused(tmp_path, cli) -> None:
    folder = _study_folder(tmp_path)
    _create(folder, cli)
    out = _run(folder, cli, 9)
    assert "paused at epoch 1" in out and "(continues #" in out
    study = _load(folder)
    _check_promotions(study, _calls(folder / "calls.jsonl"))
    assert "9 finished (1 complete, 8 pruned, 0 failed)" in out
    # A paused trial that nobody continues leaves no checkpoint behind, nor does the winner.
    assert not list((folder / "studies/checkpoints/h").glob("*.pt"))
    shown = cli("show", "h", cwd=folder)
    assert shown.returncode == 0, shown.stderr
    assert "9 finished" in shown.stdout
    facts = reporting.Facts.of(study, "sqlite:///" + str(folder / "studies/h.db"))
    assert len(facts.trials) == 9 and facts.best.params["x"] == 0.9


def test_two_workers_and_a_kill_9_take_each_decision_once(tmp_path, cli) -> None:
    folder = _study_folder(tmp_path)
    _create(folder, cli)
    calls = folder / "calls.jsonl"
    env = {
        **os.environ,
        "CALLS": str(calls),
        "STEP_SECONDS": "0.3",
        "PYTHONUNBUFFERED": "1",
    }
    command = [
        *search_command(),
        "run",
        "--study",
        "h",
        "--trials",
        "9",
        "--jobs",
        "2",
        "--heartbeat",
        "1",
    ]
    first = subprocess.Popen(
        command,
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    # Killed once a continuation has trained a step past its pause: mid-way through rung 1.
    while time.monotonic() < deadline and first.poll() is None:
        if calls.exists() and any(c["start"] == 2 for c in _calls(calls)):
            time.sleep(0.5)
            break
        time.sleep(0.1)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert any(c["start"] == 2 for c in _calls(calls)), first.stdout.read()
    time.sleep(3.5)  # the killed trials' heartbeats go stale: the resume retries them
    again = subprocess.run(
        command, cwd=folder, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr
    study = _load(folder)
    _check_promotions(study, _calls(calls))
    continuations = [t for t in study.trials if studies.continues(t) is not None]
    # One continuation per promotion (a crash retry of one is another segment of it).
    paused = [
        studies.continues(t)
        for t in continuations
        if studies.retried_from(t) == studies.continues(t)
    ]
    assert len(paused) == len(set(paused)) == 4


def test_workers_on_postgresql_decide_each_rung_once(tmp_path, cli, postgres) -> None:
    folder = _study_folder(tmp_path)
    url = postgres.database()
    _create(folder, cli, url=url)
    env = {**os.environ, "CALLS": str(folder / "calls.jsonl"), "STEP_SECONDS": "0.05"}
    command = [*search_command(), "worker", "--study", "h", "--storage", url, "--trials", "9"]
    workers = [
        subprocess.Popen(
            command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    _check_promotions(_load(folder, url), _calls(folder / "calls.jsonl"))


def test_the_noise_rule_ranks_nothing_it_cannot_resolve() -> None:
    tiny = Noise(examples=27, chance=1 / 3)
    assert tiny.too_small() and "27 examples" in tiny.warning()
    assert not Noise(examples=800, chance=0.1).too_small()
    # At chance, 0.370 and 0.333 are one example apart: ranked on the training loss alone.
    at_chance = [Candidate(0, 0.37, 1.2), Candidate(1, 0.333, 1.0), Candidate(2, 0.333, 1.1)]
    assert [c.number for c in rungs.rank(at_chance, tiny)] == [1, 2, 0]
    # 0.74 is apart from 0.33; 0.70 is within the noise of 0.74: their losses decide.
    mixed = [Candidate(0, 0.74, 0.9), Candidate(1, 0.70, 0.5), Candidate(2, 0.33, 0.1)]
    assert [c.number for c in rungs.rank(mixed, tiny)] == [1, 0, 2]
    # On 10,000 examples the same 0.74 and 0.70 are apart: the accuracy decides.
    assert [c.number for c in rungs.rank(mixed, Noise(10_000, 1 / 3))] == [0, 1, 2]
    # Without a noise model (a metric that is not an accuracy), only exact ties go to the loss.
    assert [c.number for c in rungs.rank(mixed, None)] == [0, 1, 2]
    # Keeping one: at the first rung the loss breaks the tie; later the tie goes on whole.
    assert [c.number for c in rungs.choose(mixed, tiny, 1, carry=False)] == [1]
    assert [c.number for c in rungs.choose(mixed, tiny, 1, carry=True)] == [1, 0]
    assert [c.number for c in rungs.choose(mixed, Noise(10_000, 1 / 3), 1, carry=True)] == [0]


def test_search_run_warns_once_of_a_validation_split_too_small(tmp_path, cli) -> None:
    space = {
        "task": {"name": "digits", "model": "cnn", "epochs": 1, "val_fraction": 0.015},
        "params": {"lr": {"type": "float", "low": 0.01, "high": 0.1}},
    }
    (tmp_path / "small.toml").write_text(toml(space))
    done = cli("run", "--space", "small.toml", "--trials", "1")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stdout.splitlines() if "validation split has" in line]
    assert len(warnings) == 1
    assert "22 examples" in warnings[0] and "val_fraction" in warnings[0], warnings


def test_brackets_fill_in_turn_whatever_the_target() -> None:
    halving = rungs.Halving(40)
    (one,) = halving.cycle
    assert one.rungs == (1, 3, 9, 27) and one.size == rungs.BRACKET_SIZE == 20
    halving.target = 45
    assert [halving.bracket_of(i) for i in (0, 19, 20, 44)] == [0, 0, 1, 2]
    assert [halving.size(n) for n in range(4)] == [20, 20, 5, 0]
    hyperband = rungs.Halving(40, hyperband=True)
    assert [b.rungs for b in hyperband.cycle] == [(1, 3, 9, 27), (3, 9, 27), (9, 27), (27,), ()]
    assert [b.size for b in hyperband.cycle] == [29, 19, 7, 3, 2]  # Hyperband's proportions
    hyperband.target = 100
    assert [hyperband.bracket_of(i) for i in (0, 29, 59, 60)] == [0, 1, 4, 5]
    assert hyperband.size(5) == 29 and hyperband.size(6) == 11 and hyperband.size(7) == 0


def test_the_sampler_sees_each_configuration_at_the_highest_rung_enough_reached(
    tmp_path, cli
) -> None:
    folder = _study_folder(tmp_path)
    _create(folder, cli)
    _run(folder, cli, 9)
    trials = _load(folder).get_trials(deepcopy=False)
    pruner = rungs.Halving(9)
    # Nine reached step 1, three step 3, one the end: with 3 needed, the view is at step 3.
    seen = promotion.rung_view(trials, pruner, enough=3)
    assert sorted((t.params["x"], round(t.value, 4)) for t in seen) == [
        (0.7, round(0.7 * 3 / 9, 4)),
        (0.8, round(0.8 * 3 / 9, 4)),
        (0.9, round(0.9 * 3 / 9, 4)),
    ]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in seen)
    at_first = promotion.rung_view(trials, pruner, enough=4)
    assert sorted(t.params["x"] for t in at_first) == sorted(XS)


def test_a_warm_start_drops_params_outside_the_new_space(tmp_path, cli) -> None:
    folder = _study_folder(tmp_path)
    _create(folder, cli, trials=3, pruner="none")
    _run(folder, cli, 3)
    narrower = {
        "task": {"train": "curves.py:train", "epochs": 9, "direction": "maximize"},
        "params": {
            "x": {"type": "categorical", "choices": [0.1, 0.3]},
            "y": {"type": "float", "low": 0.0, "high": 1.0},
        },
    }
    (folder / "narrow.toml").write_text(toml(narrower))
    warm = cli(
        "run",
        "--space",
        "narrow.toml",
        "--study",
        "w",
        "--trials",
        "2",
        "--sampler",
        "random",
        "--warm-start",
        "h",
        cwd=folder,
        env={"CALLS": str(folder / "calls.jsonl")},
    )
    assert warm.returncode == 0, warm.stderr
    assert (
        "warm start: 1 configuration(s) from h queued first; dropped x (0.9 outside" in warm.stdout
    )
    missing = cli(
        "run",
        "--space",
        "narrow.toml",
        "--study",
        "w2",
        "--trials",
        "1",
        "--warm-start",
        "nope",
        cwd=folder,
    )
    assert missing.returncode != 0 and "--warm-start nope: no study 'nope'" in missing.stderr
    assert not (folder / "studies/w2.db").exists()
