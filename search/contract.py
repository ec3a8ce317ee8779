"""What the training loop is told, and what it hands back: the contract below `train.py` and `tasks/`.

`search.train.fit` trains on anything shaped like `TrainingData` (the device-resident and streamed
data of `search.tasks`), with a `Hyperparameters` recipe, and reports `EpochResult`s. The tasks
build their data to this shape, the spaces validate params against `LOOP_PARAMS`, and the model
factories get what `split_params` leaves over. This module imports neither side, so that both can
import it: nothing here trains and nothing here reads data.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
LR_SCHEDULES = ("constant", "cosine", "onecycle", "step")


@dataclass(frozen=True)
class Hyperparameters:
    """The recipe the loop trains with; a space samples some of these (``[params.X]``) or fixes
    them for the study (``[task.recipe]``), and the rest keep these defaults.

    Attributes:
        lr: learning rate (the peak, with a schedule).
        batch_size: examples per step (the last partial batch of an epoch is dropped).
        optimizer: one of ``sgd``, ``adam``, ``adamw``, ``rmsprop`` (`torch.optim`'s).
        momentum: for ``sgd`` and ``rmsprop``; ignored by ``adam`` and ``adamw``.
        nesterov: Nesterov momentum for ``sgd`` (where momentum > 0).
        weight_decay: as each optimizer applies it (decoupled for ``adamw``).
        lr_schedule: ``constant``, ``cosine`` (to 0), ``onecycle`` or ``step`` (times
            ``step_gamma`` at half and three quarters of the study's epochs), per step over the
            study's epochs: a trial stopped early followed the schedule of one that ran through.
        warmup: share of the study's epochs over which the rate rises linearly from 1 % of ``lr``
            (``onecycle``: its own warm-up, default 0.3).
        step_gamma: the factor of the ``step`` schedule.
        label_smoothing: of the cross-entropy loss (classification).
        grad_clip: the largest gradient norm; 0: no clipping.
        augment: random crop (4-pixel padding) and horizontal flip of image inputs on the device;
            None: the task's default (on for CIFAR-10, off for your own data).
    """

    lr: float = 1e-3
    batch_size: int = 128
    optimizer: str = "adam"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup: float = 0.0
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0
    augment: bool | None = None


LOOP_PARAMS = tuple(f.name for f in dataclasses.fields(Hyperparameters))

# Names that can only mean one the loop takes: a param by such a name is refused, with the loop's
# name, even where a factory of the user's would take it (it would never see the recipe).
NEAR_MISSES = {
    "learning_rate": "lr",
    "lr_max": "lr",
    "max_lr": "lr",
    "batchsize": "batch_size",
    "optim": "optimizer",
    "scheduler": "lr_schedule",
    "schedule": "lr_schedule",
    "lr_scheduler": "lr_schedule",
    "warmup_epochs": "warmup",
    "warmup_steps": "warmup",
    "warmup_fraction": "warmup",
    "clip_grad": "grad_clip",
    "clip_grad_norm": "grad_clip",
    "max_grad_norm": "grad_clip",
    "grad_norm": "grad_clip",
    "augmentation": "augment",
    "epochs": "task.epochs",
}
# Names that may be a model's own: told the loop's name only where the factory cannot take them.
_MAYBE_THE_LOOPS = {
    "bs": "batch_size",
    "wd": "weight_decay",
    "gamma": "step_gamma",
    "smoothing": "label_smoothing",
    "clip": "grad_clip",
}


def closest_loop_param(name: str) -> str | None:
    """The loop's name that ``name`` probably means (``learning_rate`` → ``lr``), or None."""
    known = {**_MAYBE_THE_LOOPS, **NEAR_MISSES}
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, [*LOOP_PARAMS, *known], n=1, cutoff=0.8)
    if not close:
        return None
    return known.get(close[0], close[0])


def split_params(params: dict[str, Any]) -> tuple[Hyperparameters, dict[str, Any]]:
    """A trial's params split in two: what the training loop takes, and everything else
    (depth included), which goes to the model factory by keyword."""
    loop = {k: v for k, v in params.items() if k in LOOP_PARAMS}
    return Hyperparameters(**loop), {k: v for k, v in params.items() if k not in LOOP_PARAMS}


# One input tensor, or several (a tabular model's numbers and category codes): the model's
# positional arguments, each with one row per example.
Inputs = torch.Tensor | tuple[torch.Tensor, ...]


def model_output(model: torch.nn.Module, x: Inputs) -> Any:
    """``model(x)``, or ``model(*x)`` for data with several inputs."""
    return model(*x) if isinstance(x, tuple) else model(x)


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to the input, or to each of several."""
    return tuple(fn(part) for part in x) if isinstance(x, tuple) else fn(x)


def rows_of(x: Inputs, index: torch.Tensor | slice) -> Inputs:
    """The rows ``index`` of the input, or of each of several."""
    return map_inputs(lambda part: part[index], x)


def first_input(x: Inputs) -> torch.Tensor:
    return x[0] if isinstance(x, tuple) else x


@dataclass(frozen=True)
class EpochResult:
    """One report: the validation metric after an epoch, or after a fraction of one when `fit`
    reports k times per epoch (then ``epoch`` is 1/k, 2/k, ... and ``step`` counts reports)."""

    epoch: float  # 1-based, in epochs: a whole number when reports come once per epoch
    train_loss: float  # mean over the steps since the previous report
    value: float  # the validation metric (accuracy, RMSE ...), what the trial reports
    seconds: float  # wall time since the previous report, training and evaluation
    images_per_second: float  # training throughput, in examples
    step: int = 0  # 1-based report count, what the pruner sees (0: a row saved without one)
    # Other numbers a training function of the user's reported with its value, by name.
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.step == 0:  # a checkpoint row from before reports could come more often
            object.__setattr__(self, "step", round(self.epoch))

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpochResult:
        """A report as a checkpoint stored it (rows written before metrics were named held
        ``val_accuracy``)."""
        row = dict(row)
        if "val_accuracy" in row:
            row["value"] = row.pop("val_accuracy")
        return cls(**row)


class TrainingData(Protocol):
    """What `fit` trains on: device-resident data (`search.tasks.data.DeviceData`) or data
    streamed from the host (`search.tasks.streaming.StreamingData`), batches on ``device``.
    Training batches carry targets as the loss takes them (regression targets standardized);
    validation and other splits carry them as the data holds them, and `targets` maps the
    model's outputs back to that scale."""

    @property
    def device(self) -> torch.device: ...

    @property
    def n_train(self) -> int: ...

    augment: bool  # the task's default: crop and flip image batches

    def batches(
        self, batch_size: int, generator: torch.Generator, augment: bool = False
    ) -> Iterator[tuple[Inputs, torch.Tensor]]: ...

    def val_batches(self, batch_size: int) -> Iterator[tuple[Inputs, torch.Tensor]]: ...

    # What retraining, export and the benchmarks use besides `fit`:
    mode: str  # "resident" or "stream", recorded on each trial
    inputs: Any  # `search.tasks.scaling.InputScale`: how raw inputs become the model's
    targets: Any  # `search.tasks.scaling.TargetScale` for regression targets, else None

    def split_batches(
        self, split: Any, batch_size: int
    ) -> Iterator[tuple[Inputs, torch.Tensor]]: ...

    def examples(self, n: int) -> tuple[Inputs, torch.Tensor]: ...

    def with_validation_in_training(self) -> TrainingData: ...


class ModelBuilder(Protocol):
    """A task's model factory, resolved (`search.tasks.factory.ModelFactory`): it builds the
    model for a trial's params."""

    reference: str  # as the space names it: a family (``cnn``) or ``models.py:build``

    def build(
        self, params: dict[str, Any], input_shape: tuple[Any, ...], num_classes: int
    ) -> torch.nn.Module: ...

    def kwargs(self, params: dict[str, Any]) -> dict[str, Any]: ...

    def size(self, params: dict[str, Any]) -> dict[str, float]: ...


class Checkpoint(Protocol):
    """Where `fit` keeps its state between epochs (see `search.checkpoint.FileCheckpoint`)."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


def layout_for(device: torch.device, dims: int = 4) -> torch.memory_format:
    """channels_last for images on CUDA, where convolutions run faster in it (and with bf16);
    plain elsewhere."""
    return torch.channels_last if device.type == "cuda" and dims == 4 else torch.contiguous_format
