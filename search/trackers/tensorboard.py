"""TensorBoard: one run per trial in ``DIR/STUDY/trial-N``, scalars per report and an HParams
summary per trial, written with PyTorch's `SummaryWriter` and TensorBoard's own HParams protos.

A run's step is the trial's report: with k reports per epoch, step k is the end of epoch 1 (the
``epoch`` scalar says which epoch each step is). The study's metric is logged as ``val_NAME``
(``val_accuracy``, ``val_rmse`` ...). The HParams summary is written when the trial ends, so that
its params sit beside its state (COMPLETE, PRUNED or FAIL), its reason and its best value:
TensorBoard's HParams table and parallel-coordinates views compare the trials on them, and running
trials show their scalars meanwhile. TensorBoard works out each param's domain from the trials
themselves, so conditional params (sampled by some trials only) need no declaring.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tensorboard.plugins.hparams import summary_v2
from torch.utils.tensorboard import SummaryWriter

from search.study import Metric, trial_attrs
from search.trackers.base import Tracker

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from search.contract import EpochResult


class TensorBoardTracker(Tracker):
    """Writes a study's trials under ``folder`` (DIR/STUDY), one run folder each."""

    def __init__(self, folder: Path, metric: Metric) -> None:
        self.folder = folder
        self.metric = metric
        self._writers: dict[int, SummaryWriter] = {}
        self._started: dict[int, tuple[float, int | None, int]] = {}  # time, retry of, last step

    def run_folder(self, number: int) -> Path:
        return self.folder / f"trial-{number}"

    def started(self, number: int, params: dict[str, Any], previous: int | None) -> None:
        self._writers[number] = SummaryWriter(log_dir=str(self.run_folder(number)))
        self._started[number] = (time.time(), previous, 0)

    def reported(self, number: int, result: EpochResult) -> None:
        writer = self._writers.get(number)
        if writer is None:
            return
        step = result.step
        writer.add_scalar(f"val_{self.metric.name}", result.value, step)
        writer.add_scalar("train_loss", result.train_loss, step)
        writer.add_scalar("images_per_second", result.images_per_second, step)
        writer.add_scalar("epoch", result.epoch, step)
        for name, value in result.metrics.items():  # a training function's own numbers
            writer.add_scalar(name, value, step)
        writer.flush()  # seen in TensorBoard at once, not after the writer's two-minute timer
        start, previous, _ = self._started[number]
        self._started[number] = (start, previous, step)

    def finished(self, trial: FrozenTrial) -> None:
        writer = self._writers.pop(trial.number, None)
        if writer is None:
            return  # it never started training (a surplus trial), or ran in another process
        start, previous, last_step = self._started.pop(trial.number)
        attrs = trial_attrs(trial)
        best = (
            trial.values[0]
            if trial.values
            else self.metric.best(trial.intermediate_values.values())
        )
        if best is not None:
            writer.add_scalar(f"best_val_{self.metric.name}", best, last_step)
        writer.add_scalar("seconds", attrs.get("seconds", 0.0), last_step)
        hparams: dict[str, Any] = {**trial.params, "state": trial.state.name}
        reason = trial.user_attrs.get("fail_reason") or (
            "pruned" if trial.state.name == "PRUNED" else None
        )
        if reason:
            hparams["reason"] = reason  # why it stopped early; a complete trial has none
        hparams["epochs_run"] = float(attrs.get("epochs_run", 0))
        if previous is not None:
            hparams["retry_of"] = previous
        hparams = {key: _hparam_value(value) for key, value in hparams.items()}
        # TensorBoard's own HParams summary, written into this trial's run (not a run of its own,
        # as SummaryWriter.add_hparams would make).
        summary = summary_v2.hparams_pb(
            hparams, trial_id=f"trial-{trial.number}", start_time_secs=start
        )
        writer._get_file_writer().add_summary(summary)
        writer.close()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()  # trials interrupted mid-way: their scalars so far are kept
        self._writers.clear()


def _hparam_value(value: Any) -> bool | float | str:
    """HParams take bools, numbers and strings; a categorical choice of anything else as text."""
    if isinstance(value, bool | int | float | str):
        return value
    return str(value)
