"""Warm starts: a new study begins with the best configurations of earlier studies.

The configurations are queued with Optuna's `enqueue_trial`, so that they are the study's first
trials and the sampler learns from them like any other. Each keeps the params the new space has,
with values the new space allows; the rest are dropped (and named), and any param of the new
space that a configuration lacks is sampled as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search import study as studies
from search.errors import SettingsError, StorageError
from search.spaces import Space

MOST = 5  # configurations carried over at most: a start, not a replay of the earlier search


@dataclass(frozen=True)
class Carried:
    """The configurations to queue, and the params dropped from them (by name, with why)."""

    params: list[dict[str, Any]]
    dropped: dict[str, str]
    sources: list[str]


def how_many(trials: int) -> int:
    """A tenth of the new study's trials, one to `MOST`."""
    return min(MOST, max(1, trials // 10))


def carry(sources: Sequence[optuna.Study], space: Space, count: int) -> Carried:
    """The ``count`` best configurations of ``sources`` (studies on the same metric), fitted to
    ``space``: complete trials first, then by the best value any trial of theirs reported."""
    ranked: list[tuple[tuple[bool, float], dict[str, Any]]] = []
    for source in sources:
        metric = studies.metric_of(source)
        for trial in studies.shown(source.get_trials(deepcopy=False)):
            result = studies.trial_result(trial, metric)
            if result is not None:
                ranked.append(
                    ((trial.state == TrialState.COMPLETE, metric.key(result)), trial.params)
                )
    ranked.sort(key=lambda pair: pair[0], reverse=True)
    by_name = {param.name: param.distribution for param in space.params}
    chosen: list[dict[str, Any]] = []
    dropped: dict[str, str] = {}
    for _, params in ranked:
        kept = {}
        for name, value in params.items():
            why = _why_not(by_name.get(name), value)
            if why is None:
                kept[name] = value
            else:
                dropped.setdefault(name, why)
        if kept and kept not in chosen:
            chosen.append(kept)
        if len(chosen) == count:
            break
    return Carried(chosen, dropped, [s.study_name for s in sources])


def _why_not(distribution: optuna.distributions.BaseDistribution | None, value: Any) -> str | None:
    if distribution is None:
        return "not in this space"
    try:
        inside = distribution._contains(distribution.to_internal_repr(value))
    except (ValueError, TypeError):
        inside = False
    return None if inside else f"{value!r} outside this space's range"


def enqueue(study: optuna.Study, carried: Carried) -> str:
    """Queue ``carried`` on ``study``; the line that says what was carried and dropped."""
    for params in carried.params:
        study.enqueue_trial(params, skip_if_exists=True)
    line = (
        f"warm start: {len(carried.params)} configuration(s) from "
        f"{', '.join(carried.sources)} queued first"
    )
    if carried.dropped:
        line += "; dropped " + ", ".join(
            f"{n} ({why})" for n, why in sorted(carried.dropped.items())
        )
    return line


def load_sources(names: Sequence[str], url: str | None) -> list[optuna.Study]:
    """The studies to warm-start from, each from ``url`` or its own default SQLite file.

    Raises:
        StorageError: a study is not there (the message names those that are).
        SettingsError: a study has no trials to carry.
    """
    found = []
    for name in names:
        try:
            source = studies.load_existing(name, url or studies.default_url(name))
        except StorageError as error:
            raise StorageError(f"--warm-start {name}: {error}") from None
        if not any(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in source.trials):
            raise SettingsError(f"--warm-start {name}: it has no finished trials to start from")
        found.append(source)
    return found


def metric_mismatch(sources: Sequence[optuna.Study], metric: studies.Metric) -> str | None:
    for source in sources:
        theirs = studies.metric_of(source)
        if theirs != metric:
            return (
                f"--warm-start {source.study_name}: it is scored by {theirs.name} "
                f"({theirs.direction}), this study by {metric.name} ({metric.direction})"
            )
    return None
