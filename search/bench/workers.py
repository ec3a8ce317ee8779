"""`search bench workers`: how trial throughput scales with worker processes on one study.

The objective is synthetic, and named so wherever it appears: it samples two floats (with TPE and
its constant liar, as a real study does) and then only sleeps ``--trial-seconds``. A 2-core machine
can then measure what scale-out costs (sampling, storage round trips, heartbeats, the target check)
rather than how fast it does arithmetic. Each worker count gets a fresh study, driven by the same
loop as `search worker` (`search.target.run_until_target`); throughput is read from the study
itself: finished trials over the time from the first trial's start to the last trial's end.
SQLite (one file, processes on one machine) is measured beside the ``--storage`` given.
"""

from __future__ import annotations

import multiprocessing
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from search import study as studies
from search import target
from search.errors import SearchError, SettingsError

SYNTHETIC = "synthetic objective: two floats sampled, then a sleep"


@dataclass(frozen=True)
class WorkersSettings:
    storage: str | None = None
    workers: tuple[int, ...] = (1, 2, 4, 8)
    trials: int = 32
    trial_seconds: float = 1.0
    heartbeat: int = 10


@dataclass(frozen=True)
class Measurement:
    backend: str
    workers: int
    trials: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return 60 * self.trials / self.seconds


class SleepObjective:
    """The synthetic objective: sample like a study, then wait instead of training."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -5, 5)
        y = trial.suggest_float("y", -5, 5)
        time.sleep(self.seconds)
        return -(x**2 + y**2)


def run(settings: WorkersSettings, echo: Any = print) -> list[Measurement]:
    """Measure every worker count on SQLite and on ``settings.storage`` (if given)."""
    if not settings.workers or min(settings.workers) < 1:
        raise SettingsError(f"--workers must be counts of at least 1, got {settings.workers}")
    if settings.trials < 1 or settings.trial_seconds < 0:
        raise SettingsError("--trials must be at least 1 and --trial-seconds not negative")
    folder = Path(tempfile.mkdtemp(prefix="search-bench-workers-"))
    backends = [("sqlite", f"sqlite:///{folder / 'bench-workers.db'}")]
    if settings.storage:
        studies.open_storage(settings.storage, create=False)  # reachable, before any work
        backends.append((studies.backend_name(settings.storage), settings.storage))
    echo(
        f"bench workers: {settings.trials} trials of {settings.trial_seconds:g} s each "
        f"({SYNTHETIC}) per worker count, on {', '.join(b for b, _ in backends)}"
    )
    results = []
    try:
        for backend, url in backends:
            storage = studies.open_storage(url, create=True)
            for n in settings.workers:
                measurement = _measure(backend, url, storage, n, settings)
                echo(f"  {backend:<10} {n:>2} worker(s): {measurement.per_minute:7.1f} trials/min")
                results.append(measurement)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def _measure(
    backend: str, url: str, storage: Any, n: int, settings: WorkersSettings
) -> Measurement:
    name = f"bench-workers-{n}-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=storage, study_name=name, direction="maximize")
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_worker, args=(url, name, i, settings)) for i in range(n)]
    for process in processes:
        process.start()
    try:
        for process in processes:
            process.join()
    except BaseException:
        for process in processes:
            process.terminate()
        raise
    if any(p.exitcode for p in processes):
        raise SearchError(f"a bench worker on {backend} exited with an error")
    trials = [
        t
        for t in optuna.load_study(study_name=name, storage=storage).trials
        if studies.is_finished(t)
    ]
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    if backend != "sqlite":
        optuna.delete_study(study_name=name, storage=storage)  # leave the shared storage as found
    return Measurement(backend, n, len(trials), span.total_seconds())


def _worker(url: str, name: str, index: int, settings: WorkersSettings) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = studies.open_storage(url, create=False, heartbeat=settings.heartbeat)
    study = optuna.load_study(study_name=name, storage=storage)
    study.sampler = studies.make_sampler("tpe", studies.sampler_seed(0, index, 0))
    target.run_until_target(
        study,
        SleepObjective(settings.trial_seconds),
        target=settings.trials,
        url=url,
        poll=0.1,
    )


def table(results: list[Measurement]) -> list[str]:
    """Throughput, speed-up over one worker and scaling efficiency, a column group per backend."""
    backends = list(dict.fromkeys(m.backend for m in results))
    counts = list(dict.fromkeys(m.workers for m in results))
    by = {(m.backend, m.workers): m for m in results}
    head = ["workers"] + [
        f"{b} {what}" for b in backends for what in ("trials/min", "speed-up", "efficiency")
    ]
    rows = [head]
    for n in counts:
        row = [str(n)]
        for b in backends:
            one, this = by.get((b, counts[0])), by.get((b, n))
            speedup = this.per_minute / one.per_minute * counts[0]
            row += [f"{this.per_minute:.1f}", f"{speedup:.2f}×", f"{100 * speedup / n:.0f}%"]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
