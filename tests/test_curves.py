"""Best-so-far statistics on synthetic curves whose answers are known in advance."""

from __future__ import annotations

import numpy as np
import pytest

from search.bench import curves
from search.bench.curves import StepCurve


def _curve(costs: list[float], results: list[float | None]) -> StepCurve:
    return StepCurve.best_so_far(costs, results)


def test_best_so_far_accumulates_cost_and_keeps_the_best_result() -> None:
    curve = _curve([1, 2, 3, 0.5], [0.5, None, 0.4, 0.9])
    assert curve.costs.tolist() == [1, 3, 6, 6.5]
    assert curve.values.tolist() == [0.5, 0.5, 0.5, 0.9]


def test_a_curve_is_undefined_before_its_first_result_and_held_after_its_last() -> None:
    curve = _curve([1, 2, 3], [None, 0.3, 0.7])
    read = curve.at(np.array([0.0, 1.0, 2.9, 3.0, 5.99, 6.0, 100.0]))
    assert np.isnan(read[:3]).all()
    assert read[3:].tolist() == [0.3, 0.3, 0.7, 0.7]


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert curves.iqm(np.arange(1.0, 9.0)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert curves.iqm(np.array([0.0, 0.0, 0.0, 100.0])) == 0.0  # the outlier is cut
    assert curves.iqm(np.array([1.0, 2.0, 6.0])) == pytest.approx(3.0)  # too few to cut: the mean
    columns = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0]])
    assert curves.iqm(columns, axis=0).tolist() == pytest.approx([2.5, 25.0])


def test_iqm_agrees_with_scipy_trim_mean() -> None:
    from scipy.stats import trim_mean

    values = np.random.default_rng(0).normal(size=(11, 7))
    for axis in (0, 1):
        assert curves.iqm(values, axis=axis) == pytest.approx(trim_mean(values, 0.25, axis=axis))
    with_gap = values.copy()
    with_gap[3, 2] = np.nan  # a seed without a result yet: that point has no IQM
    assert np.isnan(curves.iqm(with_gap, axis=0)[2]) and not np.isnan(curves.iqm(with_gap)[1])


def test_identical_seeds_have_a_zero_width_interval() -> None:
    seeds = [_curve([1, 1, 1], [0.2, 0.6, 0.5]) for _ in range(5)]
    resamples = curves.resample_indices(5, np.random.default_rng(1))
    final = curves.final(seeds, resamples)
    assert (final.value, final.low, final.high) == (0.6, 0.6, 0.6)


def test_bootstrap_interval_covers_the_centre_about_95_percent_of_the_time() -> None:
    # Finals drawn from a symmetric distribution centred on 0.8: the IQM's target is 0.8.
    rng = np.random.default_rng(2)
    covered = 0
    repeats = 200
    for _ in range(repeats):
        seeds = [_curve([1.0], [v]) for v in rng.normal(0.8, 0.05, size=20)]
        final = curves.final(seeds, curves.resample_indices(20, rng))
        assert final.low <= final.value <= final.high
        covered += final.low <= 0.8 <= final.high
    assert 0.88 <= covered / repeats <= 0.99


def test_a_strategy_twice_as_cheap_reaches_the_target_in_half_the_time() -> None:
    results = [[0.5, 0.7, 0.9], [0.6, 0.8, 0.85], [0.4, 0.9, 0.95]]
    reference = [_curve([10, 10, 10], r) for r in results]
    cheaper = [_curve([5, 5, 5], r) for r in results]
    resamples = curves.resample_indices(3, np.random.default_rng(3))
    times = curves.time_to_target(cheaper, reference, resamples)
    assert times.target == pytest.approx(np.mean([0.9, 0.85, 0.95]))  # 3 seeds: IQM is the mean
    # Seeds reach 0.9 after 3 and 2 trials; the second never does and is charged all 3.
    assert times.cost.value == pytest.approx((15 + 15 + 10) / 3)
    assert times.reached == pytest.approx(2 / 3)
    assert (times.ratio.value, times.ratio.low, times.ratio.high) == (0.5, 0.5, 0.5)
    own = curves.time_to_target(reference, reference, resamples)
    assert (own.ratio.value, own.ratio.low, own.ratio.high) == (1.0, 1.0, 1.0)


def test_each_seed_is_charged_until_its_own_best_first_reaches_the_target() -> None:
    # Reference finals 0.8 and 0.9 (target 0.85): one seed reaches it after 8 s, one never does
    # (charged its 8 s). The other strategy's seeds reach it after 2 + 1 s and after 1 s.
    reference = [_curve([4, 4], [0.5, 0.8]), _curve([4, 4], [0.6, 0.9])]
    other = [_curve([2, 1], [0.7, 0.9]), _curve([1, 10], [0.9, 0.95])]
    times = curves.time_to_target(
        other, reference, curves.resample_indices(2, np.random.default_rng(4))
    )
    assert times.target == pytest.approx(0.85)
    assert times.cost.value == pytest.approx(2.0)  # the IQM of two seeds: their mean
    assert times.ratio.value == pytest.approx(2.0 / 8.0)
    assert times.reached == 1.0


def test_a_strategy_that_never_reaches_the_target_is_charged_all_it_spent() -> None:
    reference = [_curve([1, 1], [0.5, 0.9]) for _ in range(3)]
    worse = [_curve([1, 1, 1], [0.5, 0.6, 0.6]) for _ in range(3)]
    times = curves.time_to_target(
        worse, reference, curves.resample_indices(3, np.random.default_rng(5))
    )
    assert times.cost.value == 3.0 and times.ratio.value == pytest.approx(1.5)
    assert times.reached == 0.0


def test_rank_agreement_of_early_and_final_accuracies() -> None:
    rng = np.random.default_rng(6)
    final = rng.uniform(0.5, 1.0, size=60)
    same_order = curves.rank_agreement(final**3 - 0.2, final, rng)  # any increasing map
    assert same_order.value == pytest.approx(1.0) and same_order.low == pytest.approx(1.0)
    reversed_order = curves.rank_agreement(-final, final, rng)
    assert reversed_order.value == pytest.approx(-1.0)
    unrelated = curves.rank_agreement(rng.uniform(size=400), rng.uniform(size=400), rng)
    assert unrelated.low < 0 < unrelated.high and abs(unrelated.value) < 0.15
    # Curves whose early order swaps 10 disjoint neighbouring pairs of the final order:
    # Spearman's rho is 1 - 6 sum(d^2) / (n (n^2 - 1)) with sum(d^2) = 10 * 2.
    order = np.argsort(final)
    ranks = np.empty(60)
    ranks[order] = np.arange(60)
    for pair in range(0, 40, 4):
        ranks[order[pair]], ranks[order[pair + 1]] = pair + 1, pair
    swapped = curves.rank_agreement(ranks / 100, final, rng)
    assert swapped.value == pytest.approx(1 - 6 * 20 / (60 * (60**2 - 1)))
    assert swapped.low <= swapped.value <= swapped.high
    assert np.isnan(curves.rank_agreement([0.1, 0.2], [0.3, 0.4], rng).value)


def test_paired_curves_need_the_same_seeds() -> None:
    one = [_curve([1], [0.5])]
    with pytest.raises(ValueError, match="same seeds"):
        curves.time_to_target(one, one * 2, curves.resample_indices(1, np.random.default_rng(0)))
