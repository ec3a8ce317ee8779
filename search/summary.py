"""Plain-text summaries of stored studies for `search list` and `search show`."""

from __future__ import annotations

from collections import Counter

import optuna
from optuna.trial import TrialState

from search import study as studies


def state_counts(study: optuna.Study) -> str:
    """``12 finished (8 complete, 3 pruned, 1 failed: diverged); 1 running``."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    reasons = Counter(
        t.user_attrs.get("fail_reason", "error") for t in trials if t.state == TrialState.FAIL
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
    try:
        return f"{study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:
        return "-"


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
        lines.append(
            f"space   {space}  task {settings['task']}  model {settings['model']}"
            f"  epochs {settings['epochs']}"
        )
        lines.append(
            f"search  {settings['sampler']} sampler, {settings['pruner']} pruner, "
            f"seed {settings['seed']}"
        )
    if environment:
        lines.append(f"device  {environment.get('device')} ({environment.get('device_name')})")
    lines.append(f"trials  {state_counts(study)}")
    try:
        best = study.best_trial
    except ValueError:
        lines.append("best    no completed trial yet")
        return "\n".join(lines)
    seconds = best.user_attrs.get("seconds", 0.0)
    throughput = best.user_attrs.get("images_per_second") or [0]
    lines.append(f"best    trial {best.number}  val_acc {best.value:.4f}")
    lines += [f"        {k} = {v}" for k, v in best.params.items()]
    lines.append(
        f"        {best.user_attrs.get('epochs_run', '?')} epochs, {seconds:.1f} s, "
        f"{max(throughput):,.0f} images/s, {best.user_attrs.get('param_count', 0):,} parameters"
    )
    return "\n".join(lines)
