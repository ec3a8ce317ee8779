"""What a task is scored by: its kind, its training loss, its validation metric and which way is better.

A space's ``task.kind`` is ``classification`` (the default: cross-entropy, accuracy, maximized) or
``regression`` (mean squared error on targets standardized with the training statistics; RMSE in
the targets' own units, minimized). ``task.loss`` and ``task.metric`` may name another built-in
one, or the user's own callable as ``FILE.py:NAME`` / ``pkg.mod:NAME``:

- a loss is ``loss(output, target) -> scalar tensor``, called on every training batch;
- a metric is ``metric(output, target) -> tensor``: its value on the validation split is the
  mean over examples of what it returns (a scalar counts as its batch's mean), or an object with
  ``update(output, target)``, ``compute()`` and ``reset()`` (a `torchmetrics.Metric`), which then
  keeps its own state.

A metric of the user's needs ``task.direction``. Metrics are summed on the device and read once per
report, as the loss is: the step loop never waits for the device. The metrics beyond accuracy and
RMSE come from torchmetrics. `Scoring` holds names and references only, so that it crosses into
worker processes as it is, and resolves them where it is used. This module imports neither
`search.train` nor `search.tasks`; both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from search import references
from search.contract import Hyperparameters
from search.errors import TaskError

KINDS = ("classification", "regression")
OWN_TRAINING = "own training"  # a training function of the user's: its own loss and metric
DIRECTIONS = ("maximize", "minimize")


class Metric(Protocol):
    """A validation metric summed on the device over batches; `compute` is its one host sync."""

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> float: ...


class _Accuracy:
    """Share of labels whose logit is the largest (per example, or per position for N×K×...
    outputs against N×... labels)."""

    def __init__(self, device: torch.device, outputs: int) -> None:
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.total = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.correct += (output.argmax(dim=1) == target).sum()
        self.total += target.numel()

    def compute(self) -> float:
        return self.correct.item() / self.total if self.total else 0.0


class _RootMeanSquaredError:
    """RMSE over every target value, in the targets' own units."""

    def __init__(self, device: torch.device, outputs: int) -> None:
        self.squares = torch.zeros((), dtype=torch.float64, device=device)
        self.total = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.squares += (output.float() - target.float()).square().sum(dtype=torch.float64)
        self.total += target.numel()

    def compute(self) -> float:
        return math.sqrt(self.squares.item() / self.total) if self.total else 0.0


class _Torchmetric:
    """A torchmetrics metric on the device, fed float outputs."""

    def __init__(self, metric: Any, device: torch.device) -> None:
        self.metric = metric.to(device)
        self.metric.reset()

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(output.float(), target)

    def compute(self) -> float:
        return float(self.metric.compute())


def _f1(device: torch.device, outputs: int) -> Metric:
    from torchmetrics.classification import MulticlassF1Score

    return _Torchmetric(
        MulticlassF1Score(num_classes=outputs, average="macro", validate_args=False), device
    )


def _mae(device: torch.device, outputs: int) -> Metric:
    from torchmetrics.regression import MeanAbsoluteError

    return _Torchmetric(MeanAbsoluteError(), device)


def _r2(device: torch.device, outputs: int) -> Metric:
    from torchmetrics.regression import R2Score

    return _Torchmetric(R2Score(), device)


@dataclass(frozen=True)
class _BuiltinMetric:
    kind: str
    direction: str
    make: Callable[[torch.device, int], Metric]
    says: str


METRICS = {
    "accuracy": _BuiltinMetric("classification", "maximize", _Accuracy, "share correct"),
    "f1": _BuiltinMetric("classification", "maximize", _f1, "macro F1, torchmetrics"),
    "rmse": _BuiltinMetric(
        "regression", "minimize", _RootMeanSquaredError, "root mean squared error"
    ),
    "mae": _BuiltinMetric("regression", "minimize", _mae, "mean absolute error, torchmetrics"),
    "r2": _BuiltinMetric(
        "regression", "maximize", _r2, "coefficient of determination, torchmetrics"
    ),
}
LOSSES = {
    "cross_entropy": "classification",
    "mse": "regression",
    "l1": "regression",
    "huber": "regression",
}
DEFAULTS = {"classification": ("cross_entropy", "accuracy"), "regression": ("mse", "rmse")}


class _Mean:
    """The mean over examples of what a user's metric function returns per batch."""

    def __init__(self, fn: Callable[..., Any], name: str, device: torch.device) -> None:
        self.fn, self.name = fn, name
        self.sum = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        value = self.fn(output, target)
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.float64, device=self.sum.device)
        if value.dim() == 0:  # the batch's mean
            self.sum += value.double() * len(target)
            self.count += len(target)
        else:  # one value per example (or per position)
            self.sum += value.double().sum()
            self.count += value.numel()

    def compute(self) -> float:
        return self.sum.item() / self.count if self.count else 0.0


class _Stateful:
    """A user's metric object with update/compute/reset (a torchmetrics metric), reset per use."""

    def __init__(self, metric: Any, device: torch.device) -> None:
        self.metric = metric.to(device) if hasattr(metric, "to") else metric
        self.metric.reset()

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        self.metric.update(output, target)

    def compute(self) -> float:
        return float(self.metric.compute())


@dataclass(frozen=True)
class Scoring:
    """How a task trains and is scored, as names and references (resolved where used).

    Attributes:
        kind: ``classification`` or ``regression``.
        loss: a built-in loss (`LOSSES`) or ``FILE.py:NAME`` / ``pkg.mod:NAME``.
        metric: a built-in metric (`METRICS`) or a reference.
        direction: ``maximize`` or ``minimize``: which way the metric is better.
        outputs: classes (classification) or targets per example (regression): what
            torchmetrics' metrics are sized by.
        base: the folder ``FILE.py`` references are relative to (the space file's).
    """

    kind: str = "classification"
    loss: str = "cross_entropy"
    metric: str = "accuracy"
    direction: str = "maximize"
    outputs: int = 0
    base: Path | None = None

    @property
    def metric_name(self) -> str:
        """The metric as shown: ``accuracy``, ``rmse``, or the NAME of the user's reference."""
        return self.metric.rpartition(":")[2]

    @property
    def own_loss(self) -> bool:
        return self.loss not in LOSSES

    @property
    def own_metric(self) -> bool:
        return self.metric not in METRICS

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def better(self, a: float, b: float) -> bool:
        """Whether metric value ``a`` is better than ``b``."""
        return a > b if self.maximize else a < b

    def best(self, values: list[float]) -> float:
        return max(values) if self.maximize else min(values)

    def criterion(self, hp: Hyperparameters) -> Callable[[Any, torch.Tensor], torch.Tensor]:
        """The training loss for a trial's recipe: ``loss(output, target)``."""
        if self.loss == "cross_entropy":
            smoothing = hp.label_smoothing
            return lambda output, target: F.cross_entropy(output, target, label_smoothing=smoothing)
        if self.loss == "mse":
            return lambda output, target: F.mse_loss(output.float(), target)
        if self.loss == "l1":
            return lambda output, target: F.l1_loss(output.float(), target)
        if self.loss == "huber":
            return lambda output, target: F.huber_loss(output.float(), target)
        return references.load(self.loss, self.base or Path("."))

    def new_metric(self, device: torch.device) -> Metric:
        """A fresh accumulator of the validation metric on ``device``."""
        if self.metric in METRICS:
            return METRICS[self.metric].make(device, self.outputs)
        found = references.load(self.metric, self.base or Path("."))
        if all(hasattr(found, name) for name in ("update", "compute", "reset")):
            return _Stateful(found, device)
        return _Mean(found, self.metric_name, device)

    def with_outputs(self, outputs: int) -> Scoring:
        return Scoring(self.kind, self.loss, self.metric, self.direction, outputs, self.base)


CLASSIFICATION = Scoring()


def from_space(
    kind: str | None,
    loss: str | None,
    metric: str | None,
    direction: str | None,
    base: Path,
    fail: Callable[[str, str], Exception],
) -> Scoring:
    """A space's ``task.kind``/``loss``/``metric``/``direction``, checked against each other
    (references are not imported here: `search.tasks.resolve` does that).

    Raises:
        what ``fail(key, problem)`` makes: a key's value is unknown or contradicts another's.
    """
    kind = kind or "classification"
    if kind not in KINDS:
        raise fail("task.kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    default_loss, default_metric = DEFAULTS[kind]
    loss, metric = loss or default_loss, metric or default_metric
    for key, value, known in (("task.loss", loss, LOSSES), ("task.metric", metric, METRICS)):
        if value in known:
            if (known[value] if key == "task.loss" else known[value].kind) != kind:
                fitting = [
                    n for n, v in known.items() if (v if key == "task.loss" else v.kind) == kind
                ]
                raise fail(
                    key,
                    f"{value!r} is for {_other(kind)}; a {kind} task takes {', '.join(fitting)} "
                    'or your own ("FILE.py:NAME")',
                )
        elif not references.looks_like_reference(value):
            raise fail(
                key,
                f"unknown {key.split('.')[1]} {value!r}; built in: "
                f'{", ".join(known)}, or your own as "FILE.py:NAME" / "pkg.module:NAME"',
            )
    if direction is not None and direction not in DIRECTIONS:
        raise fail("task.direction", f"must be maximize or minimize, got {direction!r}")
    if metric in METRICS:
        fixed = METRICS[metric].direction
        if direction is not None and direction != fixed:
            raise fail("task.direction", f"metric {metric} is {fixed}d, not {direction}d")
        direction = fixed
    elif direction is None:
        raise fail(
            "task.direction",
            f'missing: say whether your metric {metric} is better higher ("maximize") or '
            'lower ("minimize")',
        )
    return Scoring(kind, loss, metric, direction, 0, base)


def own_training(metric: str, direction: str) -> Scoring:
    """The scoring of a user's training function: only the name and direction of what it
    returns (it computes its loss and metric itself)."""
    return Scoring(OWN_TRAINING, "", metric, direction)


def _other(kind: str) -> str:
    return "regression" if kind == "classification" else "classification"


def resolve(scoring: Scoring) -> None:
    """Import the user's loss and metric now, so that a bad reference fails before a study.

    Raises:
        TaskError: naming ``task.loss`` or ``task.metric``.
    """
    for key, value, own in (
        ("task.loss", scoring.loss, scoring.own_loss),
        ("task.metric", scoring.metric, scoring.own_metric),
    ):
        if own:
            try:
                references.load(value, scoring.base or Path("."))
            except TaskError as e:
                raise TaskError(f"{key}: {e}") from None
