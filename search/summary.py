"""Plain-text summaries of stored studies for `search list` and `search show`."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState

from search import given
from search import study as studies
from search.progress import format_params


def state_counts(study: optuna.Study) -> str:
    """``12 finished (8 complete, 3 pruned, 1 failed: diverged); 1 running``, a configuration
    paused and continued counted once."""
    trials = studies.shown(study.get_trials(deepcopy=False))
    states = Counter(t.state for t in trials)
    # A retry clears the reason it inherited (None) before it records its own: one killed between
    # the two is a plain error, like any trial that died without saying why.
    reasons = Counter(
        t.user_attrs.get("fail_reason") or "error" for t in trials if t.state == TrialState.FAIL
    )
    finished = sum(studies.is_finished(t) for t in trials)
    text = (
        f"{finished} finished ({states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned, {states[TrialState.FAIL]} failed"
    )
    if reasons:
        text += ": " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    text += ")"
    if states[TrialState.RUNNING]:
        text += f"; {states[TrialState.RUNNING]} running"
    return text


def best_value(study: optuna.Study) -> str:
    """``val_acc 0.9972 (trial 51)``; for several objectives, the trial with the best metric on
    the front."""
    best = studies.best_trial(study)
    if best is None:
        return "-"
    text = f"{studies.metric_of(study).label} {best.values[0]:.4f} (trial {best.number})"
    if studies.is_multi_objective(study):
        text += f", Pareto front of {len(study.best_trials)}"
    return text


def list_studies(urls: list[str]) -> list[str]:
    """One line per study in each storage."""
    lines = []
    for url in urls:
        storage = studies.open_storage(url, create=False)
        for name in studies.study_names(storage):
            study = optuna.load_study(storage=storage, study_name=name)
            lines.append(
                f"{name}  {state_counts(study)}  best {best_value(study)}  {studies.describe(url)}"
            )
    return lines


def show(study: optuna.Study, url: str) -> str:
    """The study's settings, trial counts and best trial."""
    settings = study.user_attrs.get(studies.SETTINGS_ATTR, {})
    environment = study.user_attrs.get(studies.ENVIRONMENT_ATTR, {})
    lines = [f"study   {study.study_name}  ({studies.describe(url)})"]
    if settings:
        space = settings["space_source"]
        metric = studies.metric_of(study)
        if settings.get("train"):
            what = f"train {_shown(settings['train'])}"
        else:
            what = f"task {_shown(settings['task'])}  model {_shown(settings['model'])}"
        lines.append(f"space   {space}  {what}  epochs {settings['epochs']}")
        lines.append(
            f"scoring {settings.get('kind', 'classification')}, val {metric.name} "
            f"({metric.direction}d)"
        )
        reports = settings.get("reports_per_epoch", 1)
        lines.append(
            f"search  {settings['sampler']} sampler, {settings['pruner']} pruner"
            + (f" ({reports} reports per epoch)" if reports > 1 else "")
            + f", seed {settings['seed']}, objectives {settings.get('objectives', 'accuracy')}"
        )
    if environment:
        lines.append(f"device  {environment.get('device')} ({environment.get('device_name')})")
    lines.append(f"trials  {state_counts(study)}")
    best = studies.best_trial(study)
    if best is None:
        lines.append("best    no completed trial yet")
        return "\n".join(lines)
    front = study.best_trials
    attrs = studies.trial_attrs(best)
    seconds = attrs.get("seconds", 0.0)
    throughput = attrs.get("images_per_second") or [0]
    label = studies.metric_of(study).label
    lines.append(f"best    trial {best.number}  {label} {best.values[0]:.4f}")
    if len(front) > 1 and studies.is_multi_objective(study):
        lines.append(
            f"        (the best {label} of a Pareto front of {len(front)}: search best lists it)"
        )
    elif len(front) > 1:
        # One objective: Optuna's "best trials" are those that share the best value.
        lines.append(
            f"        ({len(front)} trials tie for the best {label}; this is the earliest, "
            f"search best --top {len(front)} lists them all)"
        )
    lines += [f"        {k} = {v}" for k, v in best.params.items()]
    costs = f"        {studies.epochs_text(attrs.get('epochs_run'))} epochs, {seconds:.1f} s"
    if "param_count" in attrs:  # trials of the harness's loop (not of a function of the user's)
        costs += f", {max(throughput):,.0f} examples/s, {attrs['param_count']:,} parameters"
    lines.append(costs)
    return "\n".join(lines)


def _shown(reference: str) -> str:
    """A space's reference as shown: an object given from Python by its name."""
    if given.is_marker(reference):
        return f"{given.name_of_marker(reference)} (a Python object)"
    return reference


def best_trials(study: optuna.Study, top: int) -> list[optuna.trial.FrozenTrial]:
    """The ``top`` complete trials by the metric; for several objectives, the Pareto front."""
    metric = studies.metric_of(study)
    if studies.is_multi_objective(study):
        return sorted(study.best_trials, key=lambda t: (-metric.key(t.values[0]), t.number))
    trials = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return sorted(trials, key=lambda t: (-metric.key(t.value), t.number))[:top]


def best_listing(study: optuna.Study, top: int, *, storage: str | None, as_json: bool) -> str:
    """`search best`: each trial's results, params, seed and the command that reproduces it."""
    settings = study.user_attrs.get(studies.SETTINGS_ATTR, {})
    objectives = settings.get("objectives", "accuracy").split(",")
    metric = studies.metric_of(study)
    task = study.user_attrs.get(studies.SPACE_ATTR, {}).get("task", {})
    args = given.call_arguments(task)  # a study made from Python objects is exported from Python
    rows = []
    for trial in best_trials(study, top):
        out = f"models/{study.study_name}-trial{trial.number}"
        if args:
            reproduce = (
                f'search.export("{study.study_name}", {args}, trial={trial.number}, out="{out}")'
            )
        else:
            command = ["search", "export", study.study_name, "--trial", str(trial.number)]
            command += ["--out", out]
            if storage:
                command += ["--storage", studies.describe(storage)]  # a password stays unprinted
            reproduce = shlex.join(command)
        attrs = studies.trial_attrs(trial)
        rows.append(
            {
                "trial": trial.number,
                "metric": metric.name,
                metric.name: studies.value(trial),
                "objectives": dict(zip(objectives, trial.values, strict=True)),
                "epochs_run": attrs.get("epochs_run"),
                "seconds": attrs.get("seconds"),
                "seed": attrs.get("seed"),
                "params": trial.params,
                "reproduce": reproduce,
            }
        )
    if as_json:
        return json.dumps(rows, indent=2)
    if not rows:
        return f"study {study.study_name} has no complete trial yet"
    heading = (
        f"Pareto front of {study.study_name} ({len(rows)} trials; "
        + ", ".join(
            f"{o} {'↑' if (metric.maximize if i == 0 else False) else '↓'}"
            for i, o in enumerate(objectives)
        )
        + ")"
        if len(objectives) > 1
        else f"best {len(rows)} of {study.study_name} by val {metric.name} "
        f"({'highest' if metric.maximize else 'lowest'} first)"
    )
    lines = [heading]
    for row in rows:
        results = "  ".join(f"{o} {_fmt(v)}" for o, v in row["objectives"].items())
        lines.append(
            f"#{row['trial']:<4} {results}  {studies.epochs_text(row['epochs_run'])} epochs  "
            f"{(row['seconds'] or 0):.1f} s  seed {row['seed']}"
        )
        lines.append(f"      {format_params(row['params'])}")
        lines.append(f"      reproduce: {row['reproduce']}")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) >= 10:
        return f"{value:,.0f}"  # a parameter count
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)
