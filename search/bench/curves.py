"""Statistics of best-so-far curves across seeds: IQM, bootstrap bands, time to a target.

A study's best-so-far curve is a step function: after each trial, at the cumulative cost (training
seconds, or trial count) spent so far, the best validation accuracy seen so far. Curves of different
seeds step at different costs, so each is read off on a common grid: undefined (NaN) before its first
result and held at its last value after its last trial (that search is over, its best stands).

Across seeds, the interquartile mean (the mean of the middle half, as rliable and Syne Tune report
it) summarizes a grid point, and a percentile bootstrap over seeds gives its 95 % confidence
interval. Two strategies run on the same seeds are compared with a paired bootstrap: each resample
draws the same seeds for both. Configurations' early accuracies are compared with their final ones
by Spearman's rank correlation (scipy's), bootstrapped over the configurations.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class StepCurve:
    """Best so far (``values``) after each cumulative ``costs``; both nondecreasing."""

    costs: np.ndarray
    values: np.ndarray

    @classmethod
    def best_so_far(cls, costs: Sequence[float], results: Sequence[float | None]) -> StepCurve:
        """From per-trial costs and results (None: the trial produced no result, but it cost)."""
        cumulative = np.cumsum(np.asarray(costs, dtype=float))
        values = np.array([np.nan if r is None else r for r in results], dtype=float)
        return cls(cumulative, np.fmax.accumulate(values))

    def at(self, grid: np.ndarray) -> np.ndarray:
        """The curve read at each grid cost: NaN before its first step, held after its last."""
        index = np.searchsorted(self.costs, grid, side="right") - 1
        out = np.full(len(grid), np.nan)
        inside = index >= 0
        out[inside] = self.values[index[inside]]
        return out


def iqm(values: np.ndarray, axis: int = 0) -> np.ndarray:
    """Interquartile mean along ``axis``: `scipy.stats.trim_mean(values, 0.25)`, vectorized.

    As there, int(0.25 n) values are cut from each end (none for 3 or fewer seeds). Unlike
    there, a NaN (a seed with no result yet) makes that point NaN instead of a slow fallback.
    """
    values = np.asarray(values, dtype=float)
    n = values.shape[axis]
    cut = int(0.25 * n)
    middle = np.take(np.sort(values, axis=axis), np.arange(cut, n - cut), axis=axis)
    return np.where(np.isnan(values).any(axis=axis), np.nan, middle.mean(axis=axis))


def grid_of(curves: Sequence[StepCurve]) -> np.ndarray:
    """Every cost at which any of ``curves`` steps: IQM curves change only there."""
    return np.unique(np.concatenate([c.costs for c in curves]))


def resample_indices(n_seeds: int, rng: np.random.Generator) -> np.ndarray:
    """``RESAMPLES`` × ``n_seeds`` seed indices drawn with replacement (shared for pairing)."""
    return rng.integers(0, n_seeds, size=(RESAMPLES, n_seeds))


def band(matrix: np.ndarray, resamples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IQM over seeds (rows of ``matrix``) and its percentile-bootstrap CI at every column."""
    boot = iqm(matrix[resamples], axis=1)  # resamples × columns
    tail = 100 * (1 - CONFIDENCE) / 2
    with warnings.catch_warnings():
        # Before every resample has a first result, a column is all NaN: its band is NaN too.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(boot, [tail, 100 - tail], axis=0)
    return iqm(matrix, axis=0), low, high


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap confidence interval."""

    value: float
    low: float
    high: float

    @classmethod
    def of(cls, value: float, draws: np.ndarray) -> Interval:
        tail = 100 * (1 - CONFIDENCE) / 2
        # "nearest" never interpolates between a finite draw and inf (a draw that never reached).
        low, high = np.percentile(draws, [tail, 100 - tail], method="nearest")
        return cls(float(value), float(low), float(high))


def final(curves: Sequence[StepCurve], resamples: np.ndarray) -> Interval:
    """IQM of each seed's final best, with its bootstrap CI."""
    finals = np.array([c.values[-1] for c in curves])
    return Interval.of(float(iqm(finals)), iqm(finals[resamples], axis=1))


@dataclass(frozen=True)
class TargetTimes:
    """How soon a strategy's seeds reach the reference strategy's final IQM."""

    target: float  # the reference's final IQM
    cost: Interval  # IQM over seeds of each seed's cost to reach it (all it spent if it never did)
    ratio: Interval  # that IQM over the reference's own
    reached: float  # share of seeds that reached it


def seed_costs(curves: Sequence[StepCurve], targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every curve and target: the cost at which the curve first reaches the target, or all
    it spent where it never does; and whether it did. Both shaped targets × curves."""
    costs = np.empty((len(targets), len(curves)))
    reached = np.empty((len(targets), len(curves)), dtype=bool)
    for j, curve in enumerate(curves):
        values = np.nan_to_num(curve.values, nan=-np.inf)  # best so far: nondecreasing
        # An IQM of equal accuracies can land a rounding error above them: that still reaches.
        first = np.searchsorted(values, np.asarray(targets) - 1e-9, side="left")
        reached[:, j] = first < len(values)
        costs[:, j] = np.where(
            reached[:, j], curve.costs[np.minimum(first, len(values) - 1)], curve.costs[-1]
        )
    return costs, reached


def time_to_target(
    curves: Sequence[StepCurve], reference: Sequence[StepCurve], resamples: np.ndarray
) -> TargetTimes:
    """Compare ``curves`` with ``reference`` (same seeds, same order) at the reference's final IQM.

    Each seed is charged the cost at which its best so far first reaches the target, or all it
    spent if it never does; the IQM over seeds of those costs, for ``curves`` and for
    ``reference``, gives the ratio. Each bootstrap resample draws the same seeds for both and
    recomputes the target from the resampled reference seeds, so the ratio's interval carries the
    target's uncertainty too.
    """
    if len(curves) != len(reference):
        raise ValueError(
            f"paired curves need the same seeds, got {len(curves)} and {len(reference)}"
        )
    # Row 0 is the seeds as they are; the rest are the bootstrap resamples.
    rows = np.vstack([np.arange(len(curves)), resamples])
    finals = np.array([c.values[-1] for c in reference])
    targets = iqm(finals[rows], axis=1)
    mine, mine_reached = seed_costs(curves, targets)
    theirs, _ = seed_costs(reference, targets)
    picked = np.arange(len(rows))[:, None]
    cost = iqm(mine[picked, rows], axis=1)
    ratios = cost / iqm(theirs[picked, rows], axis=1)
    return TargetTimes(
        target=float(targets[0]),
        cost=Interval.of(cost[0], cost[1:]),
        ratio=Interval.of(ratios[0], ratios[1:]),
        reached=float(mine_reached[0].mean()),
    )


def rank_agreement(
    early: Sequence[float], final: Sequence[float], rng: np.random.Generator
) -> Interval:
    """Spearman's rank correlation between configurations' ``early`` and ``final`` accuracies,
    with a percentile-bootstrap interval over the configurations: how well stopping at the early
    point would rank them. NaN with fewer than three configurations."""
    early, final = np.asarray(early, dtype=float), np.asarray(final, dtype=float)
    if len(early) < 3:
        return Interval(float("nan"), float("nan"), float("nan"))
    draws = rng.integers(0, len(early), size=(RESAMPLES, len(early)))
    value = scipy.stats.spearmanr(early, final).statistic
    # Spearman's rho is Pearson's r of the ranks (ties averaged): all resamples at once.
    x = scipy.stats.rankdata(early[draws], axis=1)
    y = scipy.stats.rankdata(final[draws], axis=1)
    x -= x.mean(axis=1, keepdims=True)
    y -= y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one value: NaN
        boot = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.nanpercentile(boot, [tail, 100 - tail])
    return Interval(float(value), float(low), float(high))
