"""Task registry: each task module registers its loader with `@register_task`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from search.errors import TaskError


@dataclass(frozen=True)
class Split:
    """One split of a dataset on the host: images as N×C×H×W uint8 or float, labels as int64."""

    images: torch.Tensor
    labels: torch.Tensor


# load(data_dir, download, train) -> Split
Loader = Callable[[Path, bool, bool], Split]


@dataclass(frozen=True)
class Task:
    """A dataset and the model families that fit it.

    Attributes:
        name: the name a space file's ``task.name`` uses.
        input_shape: (channels, height, width) of one image.
        num_classes: number of labels.
        models: model families (see ``search.tasks.models``) this task allows.
        augment: whether training applies random crop + flip (on the device).
        needs_data_dir: whether the data lives in ``--data-dir`` (False for bundled data).
        load: reads one split from the data directory.
    """

    name: str
    description: str
    input_shape: tuple[int, int, int]
    num_classes: int
    models: tuple[str, ...]
    augment: bool
    needs_data_dir: bool
    load: Loader


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
