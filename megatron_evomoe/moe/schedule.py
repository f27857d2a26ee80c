"""Temperature and phase schedules: pure functions of the iteration (so resume is exact).

EvoMoE (paper sec. III-C): stage 1 [0, T_S) trains the shared expert; at T_S experts are spawned
and the DTS gate starts with tau = max; tau anneals to min over ``anneal_iters``; from T_D the gate is
Top-1. The temperature is updated once per optimizer step (never per micro-batch).
"""

from __future__ import annotations

import math

from megatron_evomoe.config import EvoMoEOptions

EXPERT_DIVERSIFY = "expert_diversify"
GATE_SPARSIFY = "gate_sparsify"
TOP1 = "top1"
SPARSE = "sparse"
STABLEMOE_STAGE1 = "stage1"
STABLEMOE_STAGE2 = "stage2"


def anneal_temperature(step: int, anneal_iters: int, max_temp: float, min_temp: float, schedule: str) -> float:
    """tau after ``step`` steps of annealing: ``max_temp`` at 0, ``min_temp`` from ``anneal_iters`` on.

    linear: max - (max-min) * p; exponential: max * (min/max) ** p; cosine: min + (max-min) *
    (1 + cos(pi p)) / 2; with progress p = min(step / anneal_iters, 1).
    """
    progress = min(max(step, 0) / anneal_iters, 1.0) if anneal_iters > 0 else 1.0
    if schedule == "linear":
        return max_temp - (max_temp - min_temp) * progress
    if schedule == "exponential":
        return max_temp * (min_temp / max_temp) ** progress
    if schedule == "cosine":
        return min_temp + (max_temp - min_temp) * (1.0 + math.cos(math.pi * progress)) / 2.0
    raise ValueError(f"unknown --dts-temperature-schedule {schedule!r}")


def evomoe_phase(iteration: int, options: EvoMoEOptions) -> str:
    """Phase of step ``iteration`` (0-based): expert_diversify, gate_sparsify or top1."""
    if options.expert_diversify and iteration < options.shared_expert_iters:
        return EXPERT_DIVERSIFY
    if not options.gate_sparsify:
        return TOP1
    top1_iter = options.dts_top1_iter
    if top1_iter is None:
        top1_iter = options.shared_expert_iters + options.dts_anneal_iters
    return TOP1 if iteration >= top1_iter else GATE_SPARSIFY


def evomoe_temperature(iteration: int, options: EvoMoEOptions) -> float:
    """tau of step ``iteration``; annealing starts when the gate starts (T_S, or 0 without stage 1).

    In the "w/o gate-sparsify" ablation the gate is Switch's plain softmax: tau = 1.
    """
    if not options.gate_sparsify:
        return 1.0
    start = options.shared_expert_iters if options.expert_diversify else 0
    return anneal_temperature(
        iteration - start,
        options.dts_anneal_iters,
        options.dts_max_temperature,
        options.dts_min_temperature,
        options.dts_temperature_schedule,
    )


def diversify_iteration(options: EvoMoEOptions) -> int | None:
    """The step before which experts are spawned (T_S), or None when stage 1 is skipped."""
    if not options.expert_diversify:
        return None
    return options.shared_expert_iters
