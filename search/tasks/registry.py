"""Task registry: each task module registers its loader with `@register_task`.

A registered task has no model of its own: `search.tasks.resolve` pairs it with the space's model
factory and scoring, and makes a `Task` of the same shape out of the user's own data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from search.contract import Inputs, ModelBuilder, rows_of
from search.errors import TaskError
from search.scoring import CLASSIFICATION, Scoring


@dataclass(frozen=True)
class Split:
    """One split of a dataset on the host: inputs N×C×... (images N×C×H×W as uint8 or float,
    token ids and category codes as integers), or a tuple of several such inputs; and targets
    N×... (class indices as int64, or float regression targets)."""

    inputs: Inputs
    targets: torch.Tensor

    def __len__(self) -> int:
        return len(self.targets)

    def take(self, index: torch.Tensor) -> Split:
        """The examples ``index`` of this split."""
        return Split(rows_of(self.inputs, index), self.targets[index])


# load(data_dir, download, train) -> Split
Loader = Callable[[Path, bool, bool], Split]


@dataclass(frozen=True)
class Task:
    """A dataset and the model families that fit it.

    Attributes:
        name: the name a space file's ``task.name`` uses (the user's ``task.data`` for theirs).
        input_shape: the shape of one example: (channels, height, width) for images; for data
            with several inputs, a tuple of their shapes.
        num_classes: what the model outputs per example: classes (classification), or targets
            (regression: 1 for targets of shape N).
        models: model families (see ``search.tasks.models``) this task allows.
        augment: whether training applies random crop + flip (on the device) by default.
        needs_data_dir: whether the data lives in ``--data-dir`` (False for bundled data).
        load: reads one split from the data directory.
        validation: a validation split of the data's own; None: one is carved from training.
        model: the space's model factory, once resolved (`search.tasks.resolve`).
        fingerprint: what identifies the user's data and code, recorded on a study.
        cache: the file the user's data was decoded into, which worker processes read.
        reopen: the function that builds this task again from ``cache`` in a worker process.
        classes: the class names, in the order of the model's outputs (none for regression).
        scoring: the kind, loss, metric and direction the space chose.
        normalize: ``task.normalize``: None (floats and 8-bit images are standardized, other
            integers kept), True (everything standardized) or False (nothing).
        train: the user's own training function (``task.train``), which trials call instead
            of the harness's loop; such a task has no data, model or recipe of the harness's.
    """

    name: str
    description: str
    input_shape: tuple[Any, ...]
    num_classes: int
    models: tuple[str, ...]
    augment: bool
    needs_data_dir: bool
    load: Loader
    validation: Split | None = None
    model: ModelBuilder | None = None
    fingerprint: dict[str, Any] | None = None
    cache: Path | None = None
    reopen: Callable[..., Task] | None = None
    classes: tuple[str, ...] = ()
    scoring: Scoring = CLASSIFICATION
    normalize: bool | None = None
    train: Any = None  # a `search.tasks.own_training.TrainFunction`: trials call it, not `fit`

    def build_model(self, params: dict[str, Any]) -> nn.Module:
        """The model for a trial's params, from the space's factory."""
        if self.model is None:
            raise TaskError(f"task {self.name}: no model factory resolved (search.tasks.resolve)")
        return self.model.build(params, self.input_shape, self.num_classes)

    def with_model(self, model: ModelBuilder) -> Task:
        return dataclasses.replace(self, model=model)

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Into a worker process: the user's data reopens there from its cache entry (memory-
        mapped again, not copied through the pipe); a registered task pickles as it is."""
        if self.cache is None or self.reopen is None:
            return super().__reduce_ex__(protocol)
        return self.reopen, (self.cache, self.without_data())

    def without_data(self) -> Task:
        """This task with nothing that holds its tensors: what `reopen` completes."""
        return dataclasses.replace(self, load=_unopened, validation=None, cache=None, reopen=None)


def _unopened(data_dir: Path, download: bool, train: bool) -> Split:
    raise TaskError("the task's data was not reopened from its cache")


_TASKS: dict[str, Task] = {}
DIGITS = tuple("0123456789")  # the class names of the digit tasks


def register_task(
    name: str,
    *,
    description: str,
    input_shape: tuple[int, int, int],
    classes: tuple[str, ...],
    models: tuple[str, ...] = ("mlp", "cnn", "resnet"),
    augment: bool = False,
    needs_data_dir: bool = True,
) -> Callable[[Loader], Loader]:
    """Register the decorated loader as task ``name``, a classification into ``classes``."""

    def decorate(load: Loader) -> Loader:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        _TASKS[name] = Task(
            name,
            description,
            input_shape,
            len(classes),
            models,
            augment,
            needs_data_dir,
            load,
            classes=classes,
        )
        return load

    return decorate


def get(name: str) -> Task:
    """The task called ``name``; `TaskError` listing the known ones otherwise."""
    try:
        return _TASKS[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(names())}") from None


def names() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(_TASKS)
