"""Trackers: a study's trials as TensorBoard runs and MLflow runs, written while they train.

`search run --tensorboard DIR --mlflow URI` (and `search worker`) resolve where to write once, into
`Targets`, which the study records (`TRACKERS_ATTR`) so that a resume, or a worker that names
neither, keeps writing there; the targets cross into every worker inside its plan, and each worker
opens its own `Trackers` on them. They hang off two hooks and nothing else: the objective calls
`started` once a trial has its params and `reported` after each validation report, and Optuna calls
`Trackers` as a callback once a trial is told. `train.py` knows nothing of them.

Each tracker is an optional extra (`search[tensorboard]`, `search[mlflow]`): a flag whose extra is
missing fails with one line naming it, before a study is created or changed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.errors import SettingsError
from search.trackers.base import Targets, Tracker, Trackers

if TYPE_CHECKING:
    from search.study import Metric

__all__ = ["Targets", "Tracker", "Trackers", "open_trackers", "prepare", "resolve"]

TRACKERS_ATTR = "search.trackers"  # the study's {"tensorboard": folder, "mlflow": URI}
OFF = "none"  # either flag's value that stops writing there
# What each tracker needs installed, and the extra that installs it.
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


def resolve(stored: dict[str, Any] | None, tensorboard: Path | None, mlflow: str | None) -> Targets:
    """The flags given, else what the study recorded; each flag's extra checked installed.

    ``none`` for either flag stops writing there (and the study forgets it).
    """
    stored = stored or {}
    targets = Targets(
        tensorboard=_chosen(
            tensorboard, stored.get("tensorboard"), lambda path: str(path.expanduser().resolve())
        ),
        mlflow=_chosen(mlflow, stored.get("mlflow"), _absolute_uri),
    )
    for flag, given, value in (
        ("tensorboard", tensorboard, targets.tensorboard),
        ("mlflow", mlflow, targets.mlflow),
    ):
        module, extra = _NEEDS[flag]
        if value and importlib.util.find_spec(module) is None:
            where = f"--{flag} {given}" if given else f"the study's --{flag} {value}"
            raise SettingsError(
                f"{where}: {module} is not installed; pip install 'search[{extra}]'"
            )
    return targets


def _chosen(given: Any, recorded: str | None, absolute: Callable[[Any], str]) -> str | None:
    """One flag's place: the study's when not given, none when it says so, else made absolute."""
    if given is None:
        return recorded
    if str(given) == OFF:
        return None
    return absolute(given)


def _absolute_uri(uri: str) -> str:
    """A URI that means the same from any folder: a relative SQLite file or folder made absolute."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return str(Path(uri).expanduser().resolve())
    return uri


def prepare(
    targets: Targets,
    study: str,
    record: dict[str, Any],
    *,
    given: bool = True,
    warn: Callable[[str], None] | None = None,
) -> Targets:
    """Find or make what the targets need once per study (MLflow's experiment and study run).

    A tracking server named on the command line (``given``) must answer; one the study recorded
    and that does not answer now costs a warning, and this run logs nothing there.

    Raises:
        SettingsError: the MLflow tracking server named on the command line did not answer.
    """
    if not targets.mlflow:
        return targets
    from search.trackers import mlflow as mlflow_tracker

    try:
        experiment, run = mlflow_tracker.study_run(targets.mlflow, study, record)
    except SettingsError as error:
        if given:
            raise
        line = (
            f"warning: the study's {error}; this run logs nothing to MLflow "
            "(--mlflow none forgets it, --mlflow URI moves it)"
        )
        (warn or _to_stderr)(line)
        return replace(targets, mlflow=None)
    return replace(targets, mlflow_experiment=experiment, mlflow_study_run=run)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def open_trackers(
    targets: Targets,
    study: str,
    metric: Metric | None = None,
    echo: Callable[[str], None] = print,
) -> Trackers:
    """A worker's trackers on ``targets`` (none when it has none), logging the study's validation
    ``metric`` (accuracy by default) as ``val_NAME``."""
    from search.study import Metric

    metric = metric or Metric()
    trackers: list[Tracker] = []
    if targets.tensorboard:
        from search.trackers.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(Path(targets.tensorboard) / study, metric))
    if targets.mlflow:
        from search.trackers.mlflow import MlflowTracker

        trackers.append(MlflowTracker(targets, study, echo, metric))
    return Trackers(trackers)
