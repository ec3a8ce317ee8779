"""What every tracker is: the places a study's trials are tracked, and the hooks a tracker takes.

`search.trackers` resolves the places and opens the trackers; `search.trackers.tensorboard` and
`search.trackers.mlflow` implement `Tracker`. This module imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from search.contract import EpochResult


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
