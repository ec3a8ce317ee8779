"""What a study spends outside training, split into sampling, storage and pruning.

`Meter` wraps one study's sampler, pruner and RDB storage in timers that count *exclusive* time
(storage reads a sampler makes are storage, not sampling), and listens on the storage's SQLAlchemy
engine for round trips: every statement sent and every commit. Nothing in a study's code path
knows it is measured; `search bench study` attaches a meter to each study it runs. The claims at
the target (`search.claims`) go to the database beside Optuna's storage, and count as storage.
"""

from __future__ import annotations

import threading
import time
import types
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy

from search import claims
from search import study as studies

PHASES = ("sampling", "storage", "pruning")
_SAMPLER_METHODS = (
    "infer_relative_search_space",
    "sample_relative",
    "sample_independent",
    "before_trial",
    "after_trial",
)


@dataclass(frozen=True)
class Bookkeeping:
    """Per trial: milliseconds by phase, and the storage round trips (statements and commits)."""

    trials: int
    sampling_ms: float
    storage_ms: float
    pruning_ms: float
    statements: float
    commits: float

    @property
    def total_ms(self) -> float:
        return self.sampling_ms + self.storage_ms + self.pruning_ms

    @property
    def round_trips(self) -> float:
        return self.statements + self.commits


class Meter:
    """Times the study's sampling, storage and pruning (each exclusive of the others)."""

    def __init__(self) -> None:
        self._restores: list[tuple[Any, str, Any]] = []  # module functions to put back
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self._stack: list[list[Any]] = []  # [phase, seconds spent in nested phases]
        # The trial loop's thread only: a heartbeat thread's writes run beside it, not in it.
        self._thread = threading.get_ident()

    def attach(self, study: optuna.Study) -> optuna.Study:
        """Meter ``study`` (its sampler, pruner and RDB storage) from now on."""
        for name in _SAMPLER_METHODS:
            self._wrap(study.sampler, name, "sampling")
        self._wrap(study.pruner, "prune", "pruning")
        storage = studies.rdb_storage(study)
        for name in dir(type(storage)):
            if not name.startswith("__") and callable(getattr(type(storage), name, None)):
                self._wrap(storage, name, "storage")
        for name in ("claim", "counts"):
            self._wrap(claims, name, "storage")
        engine = storage.engine
        sqlalchemy.event.listen(engine, "before_cursor_execute", self._statement)
        sqlalchemy.event.listen(engine, "commit", self._commit)
        return study

    def detach(self) -> None:
        """Put back the module functions the meter wrapped (a study's own objects stay metered)."""
        for owner, name, method in reversed(self._restores):
            setattr(owner, name, method)
        self._restores.clear()

    def result(self, trials: int) -> Bookkeeping:
        per = max(trials, 1)
        return Bookkeeping(
            trials,
            *(1000 * self.seconds[phase] / per for phase in PHASES),
            statements=self.calls["statements"] / per,
            commits=self.calls["commits"] / per,
        )

    def _wrap(self, owner: Any, name: str, phase: str) -> None:
        method = getattr(owner, name)
        if not callable(method) or isinstance(method, type):
            return
        if isinstance(owner, types.ModuleType):
            self._restores.append((owner, name, method))
        setattr(owner, name, self._timed(method, phase))

    def _timed(self, method: Callable[..., Any], phase: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._thread or (
                self._stack and self._stack[-1][0] == phase
            ):
                return method(*args, **kwargs)  # a storage method calling another: one span
            self._stack.append([phase, 0.0])
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                _, nested = self._stack.pop()
                self.seconds[phase] += elapsed - nested
                if self._stack:
                    self._stack[-1][1] += elapsed

        return timed

    def _statement(self, *_: Any) -> None:
        if threading.get_ident() == self._thread:
            self.calls["statements"] += 1

    def _commit(self, *_: Any) -> None:
        if threading.get_ident() == self._thread:
            self.calls["commits"] += 1
