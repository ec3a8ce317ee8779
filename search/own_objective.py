"""A trial of the user's own training function: ``fn(params, report)`` → the value Optuna records.

The function trains however it likes and calls ``report(step, value, **metrics)`` as it goes (once
per epoch, typically). `Report` records each value (``trial.report``, the tracker, the dashboard's
note) and raises `optuna.TrialPruned` when the pruner says the trial should stop, as Optuna's own
``trial.should_prune()`` idiom would; the function need not catch it. ``report.checkpoint(state)``
saves the function's state (anything ``torch.load(weights_only=True)`` reads: state dicts, tensors,
numbers) for a retry of the trial after its worker died, which finds it in ``report.restored`` and
its reports so far already recorded. The function returns the final value, or ``(value, model)``.

The trial records what the harness's own trials record (seed, seconds, the reports with their
times, the ``loss`` metric as the train loss, the other metrics by name) in the same user attrs, so
that run lines, `search show`, `best`, the report, the dashboard and the trackers show it the same
way, each report's step shown as its epoch.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from search.checkpoint import FileCheckpoint, trial_path
from search.contract import EpochResult
from search.dashboard import save_trial_note, trial_note
from search.errors import (
    OutOfMemory,
    SearchError,
    TaskError,
    TrialError,
    TrialFailure,
    first_line,
)
from search.objective import pause_step, read_trials, segment_attrs
from search.promotion import Paused, deciding_seconds
from search.references import failure_line
from search.rungs import Halving
from search.spaces import Space
from search.study import TRIAL_ATTR, retried_from, trial_seed
from search.tasks import Task
from search.trackers import Tracker

LOSS_METRIC = "loss"  # the metric a function reports that views show as its train loss


class Report:
    """What a training function reports to: ``report(step, value, **metrics)``.

    Attributes:
        seed: the trial's seed (torch, NumPy and ``random`` are seeded with it before the call).
        epochs: the space's ``task.epochs``: the most steps a trial reports.
        device: the device this worker was given (``--device``, ``--gpus``, ``device=``); on
            CUDA it is also the current device, so that ``"cuda"`` means it.
        trial: the Optuna trial number (None when `search export` runs the function again).
        restored: the state the function last handed to `checkpoint`, when this trial retries
            one whose worker died; None otherwise.
        last_step: the step of the last report (restored ones included); 0 before the first.
    """

    def __init__(
        self,
        trial: optuna.Trial | None,
        *,
        seed: int,
        epochs: int,
        tracker: Tracker,
        checkpoint: FileCheckpoint | None,
        device: torch.device | None = None,
        pause: int | None = None,
    ) -> None:
        self._trial = trial
        self._pause = pause  # the step at which the trial pauses (successive halving that promotes)
        # Reported at (or past) its pause step: it pauses at what comes next. The rung's step,
        # and the step reported there.
        self._pausing: tuple[int, int] | None = None
        self.seed = seed
        self.epochs = epochs
        self.device = device or torch.device("cpu")
        self.trial = trial.number if trial is not None else None
        self._tracker = tracker
        self._checkpoint = checkpoint
        self.history: list[EpochResult] = []
        self.pruning_seconds = 0.0
        self._since = time.perf_counter()
        self.restored: Any = None
        state = checkpoint.load() if checkpoint is not None else None
        if state is not None:
            self.restored = state["state"]
            for row in state["history"]:  # recorded again: a retry is a new trial
                self._record(EpochResult.from_row(row))
        self.restored_steps = self.last_step

    @property
    def last_step(self) -> int:
        return self.history[-1].step if self.history else 0

    @property
    def metrics(self) -> dict[str, list[float]]:
        """Every number reported beside the value, by name, in the order reported."""
        named: dict[str, list[float]] = {}
        for result in self.history:
            for name, number in result.metrics.items():
                named.setdefault(name, []).append(number)
        return named

    def __call__(self, step: int, value: float, **metrics: float) -> None:
        """Record ``value`` (the metric the study optimizes) at ``step`` (1, 2, ... up to
        ``epochs``), with any other numbers by name; raise `optuna.TrialPruned` if the trial
        should stop here. Under successive halving that promotes, a trial that reported its
        rung's step stops (`search.promotion.Paused`) at its next `checkpoint` or report."""
        if self._pausing is not None:  # no checkpoint since the pause step: one before it serves
            raise Paused(*self._pausing)
        if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 1:
            raise TaskError(f"report(step={step!r}, ...): step must be an integer from 1")
        if step <= self.last_step:
            raise TaskError(
                f"report(step={step}, ...): steps must increase, and step {self.last_step} was "
                "reported already"
            )
        if step > self.epochs:
            raise TaskError(
                f"report(step={step}, ...): beyond task.epochs = {self.epochs}, the most steps a "
                "trial reports (the pruners' full budget); report epochs 1..report.epochs, or "
                "raise task.epochs"
            )
        value = _number(value, f"report(step={step}, value={value!r})")
        named = {k: _number(v, f"report(step={step}, {k}={v!r})") for k, v in metrics.items()}
        now = time.perf_counter()
        result = EpochResult(
            epoch=int(step),
            train_loss=named.get(LOSS_METRIC, math.nan),
            value=value,
            seconds=now - self._since,
            images_per_second=0.0,
            step=int(step),
            metrics=named,
        )
        self._since = now
        self._record(result)
        if step >= self.epochs or self._trial is None:
            return  # the full budget (nothing left to save by stopping), or no study's trial
        if isinstance(self._trial.study.pruner, Halving):
            if self._pause is not None and step >= self._pause:
                # It pauses at the checkpoint that follows (or, without one, at the next report),
                # and goes on, if promoted, from its last checkpoint.
                self._pausing = (self._pause, step)
                if self._checkpoint is None:
                    raise Paused(*self._pausing)
            return
        start = time.perf_counter()
        prune = self._trial.should_prune()
        self.pruning_seconds += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {step}")

    def checkpoint(self, state: Any) -> None:
        """Save ``state`` for a retry of this trial (replacing the last one saved)."""
        if self._checkpoint is None:
            return
        buffer = io.BytesIO()
        torch.save(
            {"state": state, "history": [dataclasses.asdict(r) for r in self.history]}, buffer
        )
        try:  # what a retry will read, refused now rather than then
            torch.load(io.BytesIO(buffer.getvalue()), weights_only=True, map_location="cpu")
        except Exception as e:
            raise TaskError(
                f"report.checkpoint(state): a retry could not read it back with "
                f"torch.load(weights_only=True) ({first_line(e)}); hand over state dicts, "
                "tensors, numbers, lists and dicts"
            ) from None
        self._checkpoint.write(buffer)
        if self._pausing is not None:
            raise Paused(*self._pausing)

    def _record(self, result: EpochResult) -> None:
        self.history.append(result)
        if self._trial is not None:
            self._tracker.reported(self._trial.number, result)
            self._trial.report(result.value, result.step)


class OwnObjective:
    """The Optuna objective of a study whose trials call the user's training function."""

    def __init__(
        self,
        space: Space,
        task: Task,
        *,
        epochs: int,
        seed: int,
        device: torch.device | None = None,
        checkpoint_dir: Path | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.space = space
        self.task = task
        self.device = device or torch.device("cpu")
        self.epochs = epochs
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.tracker = tracker or Tracker()

    def __call__(self, trial: optuna.Trial) -> float:
        sampling_start = time.perf_counter()
        params = self.space.suggest(trial)
        sampling_seconds = time.perf_counter() - sampling_start
        trials, origin = read_trials(trial)
        pause = pause_step(trial, trials)
        self.tracker.started(trial.number, params, retried_from(trials[trial.number]))
        seed = trial_seed(self.seed, origin)
        _seed_everything(seed)
        checkpoint = None
        if self.checkpoint_dir is not None:
            checkpoint = FileCheckpoint(
                trial_path(self.checkpoint_dir, origin), torch.device("cpu")
            )
        scoring = self.task.scoring
        metric = scoring.metric_name
        attrs: dict[str, Any] = {"seed": seed, "device": str(self.device), "data_mode": "yours"}
        attrs.update(segment_attrs(trials[trial.number], origin))
        report = None
        start = time.perf_counter()
        outcome = ""
        value = math.nan
        try:
            report = Report(
                trial,
                seed=seed,
                epochs=self.epochs,
                tracker=self.tracker,
                checkpoint=checkpoint,
                device=self.device,
                pause=pause,
            )
            report.pruning_seconds += deciding_seconds(trial.study.pruner)
            returned = self.task.train.fn(dict(params), report)
            value, model = _returned(returned, report, self.task.train.name)
            attrs["returned_model"] = model is not None
            if not math.isfinite(value):  # as the harness's loop fails a NaN loss: diverged
                raise TrialFailure("diverged", report.last_step, f"returned {value}")
        except Paused as paused:
            outcome = str(paused)
            attrs["paused_at"] = paused.step
            raise
        except optuna.TrialPruned as pruned:
            outcome = str(pruned) or f"pruned at epoch {report.last_step if report else 0}"
            raise optuna.TrialPruned(outcome) from None
        except KeyboardInterrupt:
            attrs.update(fail_reason="interrupted", fail_detail="interrupted")
            raise
        except torch.cuda.OutOfMemoryError:
            failure = OutOfMemory(
                (report.last_step if report else 0) + 1,
                ", ".join(f"{k} {v}" for k, v in params.items()),
            )
            attrs.update(fail_reason=failure.reason, fail_detail=str(failure))
            outcome = f"failed: {failure}"
            raise failure from None
        except TrialFailure as failure:
            attrs.update(fail_reason=failure.reason, fail_detail=str(failure))
            outcome = f"failed: {failure}"
            raise
        except Exception as error:
            attrs.update(fail_reason="error", fail_detail=f"{type(error).__name__}: {error}")
            outcome = f"failed: {attrs['fail_detail']}"
            if isinstance(error, SearchError):
                raise TrialError(f"trial {trial.number}: {error}") from error
            raise TrialError(
                f"trial {trial.number}: {self.task.train.name} raised {failure_line(error)}; the "
                "study keeps its finished trials (--debug shows the traceback)"
            ) from error
        else:
            outcome = f"complete: val {metric} {value:.4f}"
        finally:
            history = report.history if report is not None else []
            attrs = {
                "epochs_run": history[-1].epoch if history else 0,
                "epoch_seconds": [round(r.seconds, 4) for r in history],
                "train_loss": [r.train_loss for r in history],
                "val_values": [r.value for r in history],
                "metrics": report.metrics if report is not None else {},
                "seconds": round(time.perf_counter() - start, 4),
                "reports_per_epoch": 1,
                "sampling_seconds": round(sampling_seconds, 4),
                "pruning_seconds": round(report.pruning_seconds if report else 0.0, 4),
                **attrs,
            }
            if report is not None and report.restored_steps:
                attrs["resumed_from_epoch"] = report.restored_steps
            if "fail_reason" in attrs:
                trial.set_user_attr("fail_reason", attrs.pop("fail_reason"))
            trial.set_user_attr(TRIAL_ATTR, attrs)
            if outcome:
                save_trial_note(trial, trial_note(outcome, params, history, metric))
                if checkpoint is not None and "paused_at" not in attrs:
                    checkpoint.delete()
        return value


def run_own_training(
    task: Task, params: dict[str, Any], seed: int, epochs: int
) -> tuple[float, torch.nn.Module]:
    """Call a training function outside a study (nothing pruned), as a trial with ``seed`` did;
    its value and the model it returned.

    Raises:
        TrialError: it raised, or returned no model.
    """
    _seed_everything(seed)
    report = Report(None, seed=seed, epochs=epochs, tracker=Tracker(), checkpoint=None)
    name = task.train.name
    try:
        value, model = _returned(task.train.fn(dict(params), report), report, name)
    except SearchError:
        raise
    except Exception as error:
        raise TrialError(f"{name} raised {failure_line(error)}") from error
    if model is None:
        raise TrialError(f"{name} returned a value and no model this time")
    return value, model


def _returned(returned: Any, report: Report, name: str) -> tuple[float, torch.nn.Module | None]:
    """The value a training function returned (alone, or first of ``(value, model)``) and the
    model, if it returned one."""
    model = None
    if (
        isinstance(returned, tuple)
        and len(returned) == 2
        and isinstance(returned[1], torch.nn.Module)
    ):
        returned, model = returned
    if returned is None:
        last = f" (its last report was {report.history[-1].value:g})" if report.history else ""
        raise TaskError(f"{name} returned None; return the final value{last}")
    if not report.history:
        raise TaskError(
            f"{name} returned without calling report(step, value): report each epoch, so that "
            "the pruner can stop bad trials and the report can draw their curves"
        )
    return _number(returned, f"{name} returned {returned!r}"), model


def _number(value: Any, where: str) -> float:
    """A reported or returned value as a float: a Python or NumPy number, a one-element tensor."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise TaskError(f"{where}: not a number")
    return float(value)


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
