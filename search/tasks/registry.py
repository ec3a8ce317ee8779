"""Task registry: each task module registers its loader with `@register_task`.

A registered task has no model of its own: `search.tasks.resolve` pairs it with the space's model
factory, and makes a `Task` of the same shape out of the user's own data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from search.errors import TaskError

if TYPE_CHECKING:
    from torch import nn

    from search.tasks.factory import ModelFactory


@dataclass(frozen=True)
class Split:
    """One split of a dataset on the host: inputs N×C×... (images N×C×H×W) as uint8 or float,
    labels as int64."""

    images: torch.Tensor
    labels: torch.Tensor


# load(data_dir, download, train) -> Split
Loader = Callable[[Path, bool, bool], Split]


@dataclass(frozen=True)
class Task:
    """A dataset and the model families that fit it.

    Attributes:
        name: the name a space file's ``task.name`` uses (the user's ``task.data`` for theirs).
        input_shape: the shape of one example: (channels, height, width) for images.
        num_classes: number of labels.
        models: model families (see ``search.tasks.models``) this task allows.
        augment: whether training applies random crop + flip (on the device).
        needs_data_dir: whether the data lives in ``--data-dir`` (False for bundled data).
        load: reads one split from the data directory.
        validation: a validation split of the data's own; None: one is carved from training.
        model: the space's model factory, once resolved (`search.tasks.resolve`).
        fingerprint: what identifies the user's data and code, recorded on a study.
        cache: the file the user's data was decoded into, which worker processes read.
    """

    name: str
    description: str
    input_shape: tuple[int, ...]
    num_classes: int
    models: tuple[str, ...]
    augment: bool
    needs_data_dir: bool
    load: Loader
    validation: Split | None = None
    model: ModelFactory | None = None
    fingerprint: dict[str, Any] | None = None
    cache: Path | None = None

    def build_model(self, params: dict[str, Any]) -> nn.Module:
        """The model for a trial's params, from the space's factory."""
        if self.model is None:
            raise TaskError(f"task {self.name}: no model factory resolved (search.tasks.resolve)")
        return self.model.build(params, self.input_shape, self.num_classes)

    def with_model(self, model: ModelFactory) -> Task:
        return dataclasses.replace(self, model=model)

    def __reduce_ex__(self, protocol: Any) -> Any:
        """Into a worker process: the user's data reopens there from its cache entry (memory-
        mapped again, not copied through the pipe); a registered task pickles as it is."""
        if self.cache is None:
            return super().__reduce_ex__(protocol)
        from search.tasks import resolve  # which builds user tasks, and imports this module

        return resolve.reopen, (
            self.cache,
            self.name,
            self.description,
            self.model,
            self.fingerprint,
        )


_TASKS: dict[str, Task] = {}


def register_task(
    name: str,
    *,
    description: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    models: tuple[str, ...] = ("mlp", "cnn", "resnet"),
    augment: bool = False,
    needs_data_dir: bool = True,
) -> Callable[[Loader], Loader]:
    """Register the decorated loader as task ``name``."""

    def decorate(load: Loader) -> Loader:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        _TASKS[name] = Task(
            name, description, input_shape, num_classes, models, augment, needs_data_dir, load
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
