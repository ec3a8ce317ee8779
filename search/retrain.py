"""Train a finished trial's configuration again, as the trial did, and score it on the test set.

With the trial's seed the model starts from the same weights and sees its batches in the same order,
so on the same device (and thread count) it reproduces the trial's validation metric. The weights
of the best validation epoch are kept: that epoch is where the trial's result came from. This module
is the only place a task's test split is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search.contract import EpochResult, TrainingData
from search.spaces import Space
from search.tasks import Split, Task
from search.train import eval_batch_size, evaluate_batches, fit


@dataclass(frozen=True)
class Retrained:
    model: nn.Module  # with the weights of its best validation report
    history: list[EpochResult]
    best_epoch: float  # a fraction where the best report fell inside an epoch
    value: float  # the validation metric there


def retrain(
    task: Task,
    space: Space,
    data: TrainingData,
    params: dict[str, Any],
    *,
    seed: int,
    epochs: int,
    schedule_epochs: int,
    keep: str = "best",
    reports_per_epoch: int = 1,
) -> Retrained:
    """Train ``params`` (with the space's fixed recipe) for ``epochs`` epochs with ``seed``,
    on the learning-rate schedule of the study's ``schedule_epochs``, keeping the weights of the
    best validation report (``keep="best"``) or of the last one (``"last"``: when validation data
    is trained on, its metric cannot choose). With the trial's ``reports_per_epoch``, its best
    report inside an epoch is among those scored."""
    scoring = task.scoring
    torch.manual_seed(seed)  # as the objective does before building the model
    model = task.build_model(params)
    best: dict[str, Any] = {}

    def keep_best(result: EpochResult) -> None:
        if keep == "last" or not best or scoring.better(result.value, best["value"]):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best.update(value=result.value, epoch=result.epoch, state=state)

    history = fit(
        model,
        data,
        space.hyperparameters(params),
        epochs=epochs,
        seed=seed,
        scoring=scoring,
        on_epoch=keep_best,
        reports_per_epoch=reports_per_epoch,
        schedule_epochs=schedule_epochs,
    )
    model.load_state_dict(best["state"])
    return Retrained(model, history, best["epoch"], best["value"])


def test_value(model: nn.Module, task: Task, data: TrainingData, test: Split) -> float:
    """The task's metric on its test split, prepared with the training statistics of ``data``."""
    return evaluate_batches(
        model,
        data.split_batches(test, eval_batch_size(data.device)),
        task.scoring,
        targets=data.targets,
    )
