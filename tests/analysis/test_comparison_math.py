"""FLOPs-to-target interpolation, mean ± std and ratios against hand computations."""

import math

import pytest

from megatron_evomoe.analysis.comparison_math import flops_to_reach, mean_std, paired_difference, ratio, value_at

CURVE = [(10.0, 100.0), (20.0, 50.0), (30.0, 40.0)]


def test_crossing_between_two_evaluations_is_interpolated_linearly():
    # 60 lies 40/50 of the way from 100 to 50: 10 + 10 * 0.8 = 18
    assert flops_to_reach(CURVE, 60.0) == pytest.approx(18.0)
    assert flops_to_reach(CURVE, 45.0) == pytest.approx(25.0)  # 20 + 10 * (50 - 45) / (50 - 40)


def test_exact_hit_first_point_and_never():
    assert flops_to_reach(CURVE, 40.0) == pytest.approx(30.0)
    assert flops_to_reach(CURVE, 200.0) == 10.0  # already there at the first evaluation
    assert flops_to_reach(CURVE, 39.9) is None  # "not reached"


def test_the_first_crossing_counts_not_a_later_rebound():
    curve = [(10.0, 100.0), (20.0, 50.0), (30.0, 70.0), (40.0, 45.0)]
    assert flops_to_reach(curve, 48.0) == pytest.approx(30.0 + 10.0 * (70 - 48) / (70 - 45))  # 38.8
    assert flops_to_reach(curve, 55.0) == pytest.approx(10.0 + 10.0 * 45 / 50)  # 19.0, before the rebound


def test_non_finite_points_are_skipped():
    assert flops_to_reach([(10.0, float("nan")), (20.0, 50.0)], 60.0) == 20.0
    assert flops_to_reach([(10.0, 100.0), (20.0, float("inf")), (30.0, 50.0)], 60.0) == 30.0


def test_mean_and_sample_std():
    stat = mean_std([1.0, 2.0, 3.0, 4.0])
    assert stat.mean == 2.5 and stat.std == pytest.approx(math.sqrt(5.0 / 3.0)) and stat.count == stat.total == 4
    assert stat.format() == "2.50 ± 1.29"


def test_missing_values_are_counted_and_shown():
    stat = mean_std([1.0, None, 3.0])
    assert (stat.mean, stat.count, stat.total) == (2.0, 2, 3)
    assert stat.std == pytest.approx(math.sqrt(2.0))
    assert stat.format() == "2.00 ± 1.41 (2/3 seeds)"
    assert mean_std([None, float("nan")]).format() == "not reached"
    assert mean_std([5.0]).format() == "5.00"  # one seed: no ± 0.00
    assert mean_std([2e12, 4e12]).format(scale=1e12, digits=1) == "3.0 ± 1.4"


def test_ratio():
    assert ratio(7.5, 10.0) == 0.75
    assert ratio(None, 10.0) is None and ratio(1.0, None) is None and ratio(1.0, 0.0) is None


def test_value_at_a_budget_is_interpolated_between_evaluations():
    assert value_at(CURVE, 15.0) == pytest.approx(75.0)  # halfway between (10, 100) and (20, 50)
    assert value_at(CURVE, 27.5) == pytest.approx(42.5)  # 50 - 10 * 0.75
    assert value_at(CURVE, 30.0) == 40.0 and value_at(CURVE, 10.0) == 100.0
    assert value_at(CURVE, 5.0) is None and value_at(CURVE, 31.0) is None  # outside what was evaluated


def test_paired_difference_at_the_budget_both_runs_reached():
    # EvoMoE spends more FLOPs per step (dense phase): it is read at Switch's total, 30.
    evomoe = [(12.0, 90.0), (24.0, 45.0), (36.0, 35.0)]
    pair = paired_difference(evomoe, CURVE)
    assert pair.budget == 30.0
    assert pair.variant_ppl == pytest.approx(40.0)  # 45 + (35 - 45) * 6 / 12
    assert pair.reference_ppl == 40.0
    assert pair.difference == pytest.approx(0.0)
    # The other way round: Switch stops earlier than a variant that is cheaper per step.
    cheap = [(8.0, 120.0), (16.0, 60.0), (40.0, 30.0)]
    pair = paired_difference(cheap, CURVE)
    assert pair.budget == 30.0
    assert pair.difference == pytest.approx((60.0 - 30.0 * 14 / 24) - 40.0)  # 42.5 - 40 = 2.5
    # Seeds 1-3 of a comparison: differences -3, -1, +1 -> mean -1, sample std 2.
    stat = mean_std([-3.0, -1.0, 1.0])
    assert (stat.mean, stat.std) == (-1.0, 2.0)
    assert paired_difference([(10.0, float("nan"))], CURVE).difference is None
