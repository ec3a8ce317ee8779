"""search: hyperparameter search and benchmarking for PyTorch, built on Optuna.

The names below load lazily, so that reading studies (``search list``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from search.errors import (
    SearchError,
    SettingsError,
    SpaceError,
    StorageError,
    TaskError,
    TrialFailure,
)

_LAZY = {
    "run": "search.api",
    "export": "search.api",
    "report": "search.api",
    "Report": ("search.own_objective", "Report"),
    "RunSettings": "search.runner",
    "RunResult": "search.runner",
    "Objective": "search.objective",
    "Space": "search.spaces",
    "load_space": ("search.spaces", "load"),
    "fit": "search.train",
    "evaluate": "search.train",
    "Hyperparameters": "search.contract",
}

__all__ = [
    "Hyperparameters",
    "Objective",
    "Report",
    "RunResult",
    "RunSettings",
    "SearchError",
    "SettingsError",
    "Space",
    "SpaceError",
    "StorageError",
    "TaskError",
    "TrialFailure",
    "evaluate",
    "export",
    "fit",
    "load_space",
    "report",
    "run",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    return getattr(importlib.import_module(module), attr)
