"""Temperature and phase schedules against hand-computed values."""

import math

import pytest

from megatron_evomoe.moe import schedule
from megatron_evomoe.moe.routers.dts import DTSRouter


@pytest.mark.parametrize(
    "kind, middle",
    [("linear", 1.15), ("exponential", 2.0 * (0.3 / 2.0) ** 0.5), ("cosine", 0.3 + 1.7 * 0.5)],
)
def test_anneal_values_at_start_middle_end_and_after(kind, middle):
    values = [schedule.anneal_temperature(step, 100, 2.0, 0.3, kind) for step in (0, 50, 100, 250)]
    assert values[0] == pytest.approx(2.0)
    assert values[1] == pytest.approx(middle)
    assert values[2] == pytest.approx(0.3)
    assert values[3] == pytest.approx(0.3)


def test_cosine_quarter_point():
    # min + (max - min) * (1 + cos(pi/4)) / 2
    expected = 0.3 + 1.7 * (1 + math.cos(math.pi / 4)) / 2
    assert schedule.anneal_temperature(25, 100, 2.0, 0.3, "cosine") == pytest.approx(expected)


def test_unknown_schedule_is_rejected():
    with pytest.raises(ValueError, match="temperature-schedule"):
        schedule.anneal_temperature(1, 10, 2.0, 0.3, "step")


def test_evomoe_phases_and_temperature_follow_ts_and_td():
    options = DTSRouter.Config(shared_expert_iters=10, dts_anneal_iters=20, dts_top1_iter=30)
    phases = [schedule.evomoe_phase(i, options) for i in (0, 9, 10, 29, 30, 100)]
    assert phases == ["expert_diversify", "expert_diversify", "gate_sparsify", "gate_sparsify", "top1", "top1"]
    # tau starts annealing at T_S: max at 10, halfway (linear) at 20, min from 30.
    assert schedule.evomoe_temperature(10, options) == pytest.approx(2.0)
    assert schedule.evomoe_temperature(20, options) == pytest.approx(1.15)
    assert schedule.evomoe_temperature(30, options) == pytest.approx(0.3)
    assert schedule.diversify_iteration(options) == 10


def test_ablation_without_expert_diversify_starts_the_gate_at_zero():
    options = DTSRouter.Config(shared_expert_iters=0, expert_diversify=False, dts_anneal_iters=20, dts_top1_iter=20)
    assert schedule.evomoe_phase(0, options) == "gate_sparsify"
    assert schedule.evomoe_temperature(0, options) == pytest.approx(2.0)
    assert schedule.evomoe_temperature(10, options) == pytest.approx(1.15)
    assert schedule.diversify_iteration(options) is None


def test_ablation_without_gate_sparsify_is_switch_top1_after_stage_one():
    options = DTSRouter.Config(shared_expert_iters=10, gate_sparsify=False, dts_anneal_iters=20, dts_top1_iter=30)
    assert schedule.evomoe_phase(9, options) == "expert_diversify"
    assert schedule.evomoe_phase(10, options) == "top1"
    assert schedule.evomoe_temperature(15, options) == 1.0
