"""What `search run` prints while it works: a progress bar over trials and one line per trial."""

from __future__ import annotations

from typing import Any, Self

import optuna
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

from search.study import count_finished, epochs_text, trial_attrs


def format_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def trial_line(trial: FrozenTrial) -> str:
    """``#12 COMPLETE val_acc 0.9611 lr=0.0032 ... 10 epochs 4.1s``, or the reason it stopped."""
    state = trial.state.name
    attrs = trial_attrs(trial)
    epochs = epochs_text(attrs.get("epochs_run", 0))
    seconds = attrs.get("seconds", 0.0)
    if trial.state == TrialState.COMPLETE:
        outcome = f"val_acc {trial.values[0]:.4f}"
        if len(trial.values) > 1:
            outcome += " (" + ", ".join(f"{v:.4g}" for v in trial.values[1:]) + ")"
    elif trial.state == TrialState.PRUNED:
        best = max(trial.intermediate_values.values(), default=float("nan"))
        outcome = f"val_acc {best:.4f} pruned at epoch {epochs}"
    else:
        outcome = attrs.get("fail_detail", "failed")
    return f"#{trial.number:<4} {state:<8} {outcome}  {format_params(trial.params)}  {epochs} epochs {seconds:.1f}s"


class TrialLog:
    """An Optuna callback: prints each finished trial and, on a terminal, a progress bar over the
    study's finished trials (those of every worker)."""

    def __init__(
        self, total: int, done: int = 0, show_bar: bool = True, show_lines: bool = True
    ) -> None:
        self.show_lines = show_lines
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
            self.bar.write(trial_line(trial))
        if self.bar.disable:
            return
        self.bar.n = min(self.bar.total, count_finished(study))
        accuracies = [t.values[0] for t in study.best_trials]  # the best, or the Pareto front
        if accuracies:
            self.bar.set_postfix(best=f"{max(accuracies):.4f}", refresh=False)
        self.bar.refresh()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
