"""The Optuna objective: sampled params → model → `train.fit` → per-epoch report/prune → value.

The value is the task's validation metric (accuracy, RMSE, the user's own), the best of the trial's
reports in the metric's direction. Every trial, however it ends, records what it cost: its seed,
device, the path its data took (resident or streamed), parameter count, epochs run, training
seconds, per-report seconds, images/s, train loss and metric, peak memory, and the wall time its
sampler and pruner took, as one user attr (`search.study.TRIAL_ATTR`, read through
`search.study.trial_attrs`), so that a trial's bookkeeping is one write rather than one per key;
its ``fail_reason`` is a user attr of its own, which the claim at the target counts in SQL. And a
markdown note (params and a row per report) that optuna-dashboard shows beside the trial.

A study may report k times per epoch (``reports_per_epoch``): the pruner's steps then count
reports, 1..k × epochs, and what is shown of them is in epochs (step / k).
"""

from __future__ import annotations

import gc
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import torch

from search import promotion
from search.checkpoint import FileCheckpoint, trial_path
from search.contract import EpochResult, Hyperparameters, TrainingData
from search.dashboard import save_trial_note, trial_note
from search.errors import OutOfMemory, SearchError, TrialError, TrialFailure
from search.references import failure_line
from search.rungs import Halving
from search.spaces import Space
from search.step import StepReport
from search.study import (
    TRIAL_ATTR,
    continues,
    original_number,
    retried_from,
    trial_attrs,
    trial_seed,
)
from search.tasks import Task
from search.trackers import Tracker
from search.train import fit


class Objective:
    """Trains one configuration per trial on data already on the device (or streamed to it).

    It returns the task's best validation metric; with ``objectives`` beyond the metric, a
    tuple that adds the trial's training seconds (``train-seconds``) and parameter count
    (``params``). Optuna takes no per-epoch reports in multi-objective studies, so those trials
    run unpruned.
    """

    def __init__(
        self,
        space: Space,
        task: Task,
        data: TrainingData,
        *,
        epochs: int,
        seed: int,
        checkpoint_dir: Path | None = None,
        objectives: tuple[str, ...] = ("accuracy",),  # the metric first, then any costs
        train: Callable[..., list[EpochResult]] = fit,
        reports_per_epoch: int = 1,
        tracker: Tracker | None = None,
        step: str = "auto",
    ) -> None:
        self.space = space
        self.task = task
        self.data = data
        self.epochs = epochs
        self.seed = seed
        self.checkpoint_dir = checkpoint_dir
        self.objectives = objectives
        self.train = train  # `search bench study` swaps in its reference loop; nothing else does
        self.reports_per_epoch = reports_per_epoch
        self.tracker = tracker or Tracker()  # TensorBoard, MLflow: see `search.trackers`
        self.step = step  # eager, captured or auto: see `search.step`

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        return self.complete(self.start(trial))

    def complete(self, run: TrialRun) -> float | tuple[float, ...]:
        """Train ``run`` alone and finish it: its value, or what Optuna is to be told."""
        try:
            predict_oom(run.trials, run.size)
            _fit_or_oom(
                self.train,
                run.model,
                self.data,
                run.hp,
                run.size,
                epochs=self.epochs,
                seed=run.seed,
                scoring=self.task.scoring,
                on_epoch=run.report,
                checkpoint=run.checkpoint,
                history=run.history,
                reports_per_epoch=self.reports_per_epoch,
                save_at=run.pause,
                step=self.step,
                step_report=run.step_report,
            )
        except BaseException as error:
            self.finish(run, error)  # records it, and raises what Optuna is to be told
        return self.finish(run, None)

    def start(self, trial: optuna.Trial) -> TrialRun:
        """Sample the trial's params and build its model, seeded as the trial (or the trial it
        continues) is seeded; what training it needs, and reports to it, is in the result."""
        # The sampler runs lazily, at the first suggest: this is its wall time (with the writes
        # of the params), which a benchmark charges to the trial beside its training.
        sampling_start = time.perf_counter()
        params = self.space.suggest(trial)
        sampling_seconds = time.perf_counter() - sampling_start
        hp = self.space.hyperparameters(params)
        trials, origin = read_trials(trial)  # also what the OOM check compares with
        self.tracker.started(trial.number, params, retried_from(trials[trial.number]))
        seed = trial_seed(self.seed, origin)
        device = self.data.device
        torch.manual_seed(seed)  # model initialization
        model = self.task.build_model(params)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        checkpoint = None
        if self.checkpoint_dir is not None:
            checkpoint = FileCheckpoint(trial_path(self.checkpoint_dir, origin), device)
        attrs: dict[str, Any] = {
            "seed": seed,
            "device": str(device),
            "data_mode": self.data.mode,
            "param_count": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(),
            **segment_attrs(trials[trial.number], origin),
        }
        return TrialRun(
            self,
            trial,
            params=params,
            hp=hp,
            size={"batch_size": hp.batch_size, **self.task.model.size(params)},
            trials=trials,
            origin=origin,
            seed=seed,
            model=model,
            checkpoint=checkpoint,
            pause=pause_step(trial, trials),
            attrs=attrs,
            sampling_seconds=sampling_seconds,
            pruning_seconds=promotion.deciding_seconds(trial.study.pruner),
        )

    def finish(self, run: TrialRun, error: BaseException | None) -> float | tuple[float, ...]:
        """Record how ``run`` ended (``error``: None if it trained to the end) on its trial and
        return its value; or raise what Optuna is to be told (pruned, failed, interrupted)."""
        trial, attrs, history, scoring = run.trial, run.attrs, run.history, self.task.scoring
        device = self.data.device
        outcome = ""
        try:
            if error is not None:
                raise error
        except TrialFailure as failure:
            # The failing epoch ran but reported nothing, so it is not in the history.
            attrs.update(
                fail_reason=failure.reason, fail_detail=str(failure), epochs_run=failure.epoch
            )
            if failure.reason == "oom":
                attrs["oom_at"] = run.size
            outcome = f"failed: {failure}"
            raise
        except optuna.TrialPruned as pruned:
            outcome = str(pruned)
            if isinstance(pruned, promotion.Paused):
                attrs["paused_at"] = pruned.step
            raise
        except KeyboardInterrupt:
            attrs.update(fail_reason="interrupted", fail_detail="interrupted")
            raise  # stop at once; the checkpoint stays for the retry the runner queues
        except Exception as error:
            attrs.update(fail_reason="error", fail_detail=f"{type(error).__name__}: {error}")
            outcome = f"failed: {attrs['fail_detail']}"
            if isinstance(error, SearchError):
                raise  # already one line that says what to do (a full disk, a bad checkpoint)
            # One line that says which trial and where (the user's code, most often); the cause
            # stays chained, so that a storage that stopped answering is still retried as such.
            raise TrialError(
                f"trial {trial.number} raised {failure_line(error)}; the study keeps its "
                "finished trials (--debug shows the traceback)"
            ) from error
        else:
            best = scoring.best([r.value for r in history])
            outcome = f"complete: best val {scoring.metric_name} {best:.4f}"
        finally:
            attrs = {
                **_costs(history, device),
                **step_attrs(run.step_report),
                # A fused trial's share of its group's time.
                "seconds": round((time.perf_counter() - run.started) / run.share, 4),
                "reports_per_epoch": self.reports_per_epoch,
                "sampling_seconds": round(run.sampling_seconds, 4),
                "pruning_seconds": round(run.pruning_seconds, 4),
                **attrs,
            }
            checkpoint = run.checkpoint
            if checkpoint is not None and checkpoint.restored_epochs:
                attrs["resumed_from_epoch"] = checkpoint.restored_epochs
            if "fail_reason" in attrs:
                trial.set_user_attr("fail_reason", attrs.pop("fail_reason"))
            trial.set_user_attr(TRIAL_ATTR, attrs)
            if outcome:
                save_trial_note(
                    trial, trial_note(outcome, run.params, history, scoring.metric_name)
                )
                if checkpoint is not None and "paused_at" not in attrs:
                    checkpoint.delete()  # finished: its retry will never need it
        value = scoring.best([result.value for result in history])
        if len(self.objectives) == 1:
            return value
        costs = {
            "train-seconds": sum(result.seconds for result in history),
            "params": float(attrs["param_count"]),
        }
        return (value, *(costs[name] for name in self.objectives[1:]))


@dataclass
class TrialRun:
    """One trial between `Objective.start` and `Objective.finish`: what it trains, and what it
    records; `report` is its ``on_epoch``: it reports to Optuna and prunes or pauses the trial."""

    objective: Objective
    trial: optuna.Trial
    params: dict[str, Any]
    hp: Hyperparameters
    size: dict[str, float]  # the batch size and model arguments that an OOM is recorded at
    trials: list[optuna.trial.FrozenTrial]
    origin: int  # the trial it retries or continues, or its own number
    seed: int
    model: torch.nn.Module
    checkpoint: FileCheckpoint | None
    pause: int | None  # the step it pauses at, under successive halving that promotes
    attrs: dict[str, Any]
    sampling_seconds: float
    pruning_seconds: float
    history: list[EpochResult] = field(default_factory=list)
    step_report: StepReport = field(default_factory=StepReport)
    started: float = field(default_factory=time.perf_counter)
    share: int = 1  # trials trained together with it (`search.fused_trials`), itself included

    def out_of_memory(self) -> OutOfMemory:
        """The failure of this trial's training running out of memory."""
        return OutOfMemory(int(epochs_done(self.history)) + 1, _describe(self.size))

    def report(self, result: EpochResult) -> None:
        objective, trial = self.objective, self.trial
        objective.tracker.reported(trial.number, result)
        if len(objective.objectives) > 1:
            return
        trial.report(result.value, result.step)
        # After the last epoch there is no training left to save: the trial is complete.
        if result.step >= objective.epochs * objective.reports_per_epoch:
            return
        if isinstance(trial.study.pruner, Halving):
            if result.step == self.pause:  # its state is saved: it waits for its rung's decision
                raise promotion.Paused(result.step, result.epoch)
            return  # successive halving that promotes stops no trial between its rungs
        start = time.perf_counter()
        prune = trial.should_prune()
        self.pruning_seconds += time.perf_counter() - start
        if prune:
            raise optuna.TrialPruned(f"pruned at epoch {result.epoch}")


def step_attrs(report: StepReport) -> dict[str, Any]:
    """How the trial's steps ran (``eager``, ``graph``, ``compiled``), and why not captured if
    capture was asked and failed."""
    if report.fallback is None:
        return {"step": report.ran}
    return {"step": report.ran, "step_fallback": report.fallback}


def read_trials(trial: optuna.Trial) -> tuple[list[optuna.trial.FrozenTrial], int]:
    """The study's trials, read once per trial, and the number of the trial this one retries (or
    its own): a retry of a trial whose worker died is that trial again, with the same seed and
    checkpoint. This is the read Optuna's samplers made for this trial (a random sampler's
    objective makes it here); a pruner that remembers it compares the trial with those."""
    trials = trial.study._get_trials(deepcopy=False, use_cache=True)
    remember = getattr(trial.study.pruner, "remember", None)
    if remember is not None:
        remember(trial.number, trials)
    return trials, original_number(trials[trial.number])


def pause_step(trial: optuna.Trial, trials: list[optuna.trial.FrozenTrial]) -> int | None:
    """The step at which ``trial`` pauses under successive halving that promotes; None under any
    other pruner, or for a trial that runs to the end."""
    pruner = trial.study.pruner
    return promotion.pause_at(pruner, trial, trials) if isinstance(pruner, Halving) else None


def segment_attrs(trial: optuna.trial.FrozenTrial, origin: int) -> dict[str, Any]:
    """What a trial that takes over from another records of it: the paused trial it continues
    (``continues``), or the trial it retries (``retry_of``)."""
    if origin == trial.number:
        return {}
    # It starts with a copy of its original's user attrs, failure included: cleared here.
    paused = continues(trial)
    link = {"retry_of": origin} if paused is None else {"continues": paused}
    return {**link, "fail_reason": None}


def _fit_or_oom(
    train: Callable[..., list[EpochResult]],
    model: torch.nn.Module,
    data: TrainingData,
    hp: Hyperparameters,
    size: dict[str, float],
    **kwargs: Any,
) -> None:
    """`fit`, turning an out-of-memory error into `OutOfMemory` once its memory is released."""
    history = kwargs["history"]
    try:
        train(model, data, hp, **kwargs)
        return
    except torch.cuda.OutOfMemoryError:
        pass
    except RuntimeError as error:
        if "can't allocate memory" not in str(error):  # the CPU allocator's way of saying it
            raise
    # Outside the except block the failed step's frames, and the activations they hold, are gone.
    gc.collect()
    if data.device.type == "cuda":
        torch.cuda.empty_cache()
    raise OutOfMemory(int(epochs_done(history)) + 1, _describe(size))


def predict_oom(trials: list[optuna.trial.FrozenTrial], size: dict[str, float]) -> None:
    """Fail at once, as `oom`, a configuration at least as large as one that ran out of memory.

    Samplers learn nothing from failed trials, so the study itself remembers: a later trial with
    no smaller batch and no smaller model argument (depth, width ...) than an OOM trial skips
    training it could not finish.
    """
    failed = optuna.trial.TrialState.FAIL
    for other in trials:
        if other.state == failed and other.user_attrs.get("fail_reason") == "oom":
            wall = trial_attrs(other).get("oom_at") or {}
            if wall and all(name in size and size[name] >= value for name, value in wall.items()):
                raise OutOfMemory(0, f"{_describe(size)}, as large as OOM trial {other.number}")


def _describe(size: dict[str, float]) -> str:
    return ", ".join(f"{name} {value}" for name, value in size.items())


def epochs_done(history: list[EpochResult]) -> float:
    """How many epochs ``history`` covers: a fraction when the last report fell inside one."""
    return history[-1].epoch if history else 0


def _costs(history: list[EpochResult], device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        # The CPU has no per-trial allocator statistics: this is the process's peak RSS.
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "epochs_run": epochs_done(history),
        "epoch_seconds": [round(r.seconds, 4) for r in history],
        "images_per_second": [round(r.images_per_second, 1) for r in history],
        "train_loss": [r.train_loss for r in history],
        "val_values": [r.value for r in history],
        "peak_memory_mb": round(peak_mb, 1),
    }
