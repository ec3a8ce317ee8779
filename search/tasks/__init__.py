"""Tasks: datasets and the models that fit them. Importing this package registers every task."""

from __future__ import annotations

from search.tasks import cifar10, digits, mnist, mnist1d, synthetic  # noqa: F401  (each registers itself)
from search.tasks.registry import Split, Task, get, names, register_task

__all__ = ["Split", "Task", "get", "names", "register_task"]
