"""Train a finished trial's configuration again, as the trial did, and score it on the test set.

With the trial's seed the model starts from the same weights and sees its batches in the same order,
so on the same device (and thread count) it reproduces the trial's validation accuracy. The weights
of the best validation epoch are kept: that epoch is where the trial's result came from. This module
is the only place a task's test split is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from search.tasks import Split, Task
from search.train import (
    EpochResult,
    TrainingData,
    eval_batch_size,
    evaluate_batches,
    fit,
    split_params,
)


@dataclass(frozen=True)
class Retrained:
    model: nn.Module  # with the weights of its best validation epoch
    history: list[EpochResult]
    best_epoch: float  # a fraction where the best report fell inside an epoch
    val_accuracy: float


def retrain(
    task: Task,
    data: TrainingData,
    params: dict[str, Any],
    *,
    seed: int,
    epochs: int,
    keep: str = "best",
    reports_per_epoch: int = 1,
) -> Retrained:
    """Train ``params`` for ``epochs`` epochs with ``seed``, keeping the weights of the best
    validation report (``keep="best"``) or of the last one (``"last"``: when validation data is
    trained on, its accuracy cannot choose). With the trial's ``reports_per_epoch``, its best
    report inside an epoch is among those scored."""
    hp = split_params(params)[0]
    torch.manual_seed(seed)  # as the objective does before building the model
    model = task.build_model(params)
    best: dict[str, Any] = {"accuracy": -1.0}

    def keep_best(result: EpochResult) -> None:
        if keep == "last" or result.val_accuracy > best["accuracy"]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best.update(accuracy=result.val_accuracy, epoch=result.epoch, state=state)

    history = fit(
        model,
        data,
        hp,
        epochs=epochs,
        seed=seed,
        on_epoch=keep_best,
        reports_per_epoch=reports_per_epoch,
    )
    model.load_state_dict(best["state"])
    return Retrained(model, history, best["epoch"], best["accuracy"])


def test_accuracy(model: nn.Module, data: TrainingData, test: Split) -> float:
    """Accuracy on the task's test split, normalized with the training statistics of ``data``."""
    return evaluate_batches(model, data.split_batches(test, eval_batch_size(data.device)))
