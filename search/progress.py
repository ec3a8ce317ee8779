"""What `search run` prints while it works: a progress bar over trials and one line per trial."""

from __future__ import annotations

from typing import Any, Self

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search.study import Metric, count_finished, epochs_text, trial_attrs


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def trial_line(trial: FrozenTrial, metric: Metric | None = None) -> str:
    """``#12 COMPLETE val_acc 0.9611 lr=0.0032 ... 10 epochs 4.1s``, or the reason it stopped;
    the value is the study's ``metric`` (accuracy by default)."""
    metric = metric or Metric()
    state = trial.state.name
    attrs = trial_attrs(trial)
    epochs = epochs_text(attrs.get("epochs_run", 0))
    seconds = attrs.get("seconds", 0.0)
    if trial.state == TrialState.COMPLETE:
        outcome = f"{metric.label} {trial.values[0]:.4f}"
        if len(trial.values) > 1:
            outcome += " (" + ", ".join(f"{v:.4g}" for v in trial.values[1:]) + ")"
    elif trial.state == TrialState.PRUNED:
        best = metric.best(trial.intermediate_values.values())
        # Successive halving that promotes pauses a trial at its rung; it may go on later.
        stopped = "paused" if "paused_at" in attrs else "pruned"
        outcome = f"{metric.label} {float('nan') if best is None else best:.4f} {stopped} at epoch {epochs}"
    else:
        outcome = attrs.get("fail_detail", "failed")
    if "continues" in attrs:
        outcome += f" (continues #{attrs['continues']})"
    return f"#{trial.number:<4} {state:<8} {outcome}  {format_params(trial.params)}  {epochs} epochs {seconds:.1f}s"


class TrialLog:
    """An Optuna callback: prints each finished trial and, on a terminal, a progress bar over the
    study's finished trials (those of every worker)."""

    def __init__(
        self,
        total: int,
        done: int = 0,
        show_bar: bool = True,
        show_lines: bool = True,
        metric: Metric | None = None,
    ) -> None:
        self.show_lines = show_lines
        self.metric = metric or Metric()
        self.bar = tqdm(
            total=total,
            initial=done,
            unit="trial",
            disable=None if show_bar else True,
            leave=False,
            dynamic_ncols=True,
        )

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if self.show_lines:
            self.bar.write(trial_line(trial, self.metric))
        if self.bar.disable:
            return
        self.bar.n = min(self.bar.total, count_finished(study))
        best = self.metric.best(t.values[0] for t in study.best_trials)  # or the Pareto front's
        if best is not None:
            self.bar.set_postfix({f"best {self.metric.label}": f"{best:.4f}"}, refresh=False)
        self.bar.refresh()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
