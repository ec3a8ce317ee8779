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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from search.errors import SettingsError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.train import EpochResult

TRACKERS_ATTR = "search.trackers"  # the study's {"tensorboard": folder, "mlflow": URI}
OFF = "none"  # either flag's value that stops writing there
# What each tracker needs installed, and the extra that installs it.
_NEEDS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}


@dataclass(frozen=True)
class Targets:
    """Where a study's trials are tracked; None: not there. Resolved once, pickled into workers."""

    tensorboard: str | None = None  # a folder: one run per trial in DIR/STUDY/trial-N
    mlflow: str | None = None  # a tracking URI: a server's URL or sqlite:///FILE
    mlflow_experiment: str | None = None  # the study's experiment and run, found or made once
    mlflow_study_run: str | None = None

    def stored(self) -> dict[str, str]:
        """What the study records: the places, not the ids found in them."""
        return {k: v for k, v in (("tensorboard", self.tensorboard), ("mlflow", self.mlflow)) if v}


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


class Tracker:
    """One place a study's trials are written; every hook may be called from the trial loop only."""

    def started(self, number: int, params: dict[str, Any], previous: int | None) -> None:
        """Trial ``number`` has its params; ``previous`` is the trial it retries, if any."""

    def reported(self, number: int, result: EpochResult) -> None:
        """Trial ``number`` reported ``result`` (one per report: ``result.step`` counts them)."""

    def finished(self, trial: FrozenTrial) -> None:
        """The trial was told: complete, pruned or failed."""

    def close(self) -> None:
        """Write out what is left; called once, when the worker stops."""


class Trackers(Tracker):
    """Every tracker of a worker as one, and the Optuna callback that tells them a trial ended."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def started(self, number: int, params: dict[str, Any], previous: int | None) -> None:
        for tracker in self.trackers:
            tracker.started(number, params, previous)

    def reported(self, number: int, result: EpochResult) -> None:
        for tracker in self.trackers:
            tracker.reported(number, result)

    def finished(self, trial: FrozenTrial) -> None:
        for tracker in self.trackers:
            tracker.finished(trial)

    def __call__(self, _study: optuna.Study, trial: FrozenTrial) -> None:
        self.finished(trial)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def open_trackers(targets: Targets, study: str, echo: Callable[[str], None] = print) -> Trackers:
    """A worker's trackers on ``targets`` (none when it has none)."""
    trackers: list[Tracker] = []
    if targets.tensorboard:
        from search.trackers.tensorboard import TensorBoardTracker

        trackers.append(TensorBoardTracker(Path(targets.tensorboard) / study))
    if targets.mlflow:
        from search.trackers.mlflow import MlflowTracker

        trackers.append(MlflowTracker(targets, study, echo))
    return Trackers(trackers)
