"""EvoMoE's temperature and phase schedule: pure functions of the iteration (so resume is exact).

EvoMoE (paper sec. III-C): stage 1 [0, T_S) trains the shared expert; at T_S experts are spawned
and the DTS gate starts with tau = max; tau anneals to min over ``anneal_iters``; from T_D the gate is
Top-1. The temperature is updated once per optimizer step (never per micro-batch). The DTS router's
``Config`` (``moe/routers/dts_config.py``) holds the options and calls these functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from megatron_evomoe.errors import InputError

if TYPE_CHECKING:  # dts_config imports this module
    from megatron_evomoe.moe.routers.dts_config import DTSConfig

EXPERT_DIVERSIFY = "expert_diversify"
GATE_SPARSIFY = "gate_sparsify"
TOP1 = "top1"


SHARED_EXPERT_PERCENT = 5
"""T_S in percent of --train-iters when --evomoe-shared-expert-iters is not given. EvoMoE sec. V:
5k of 100k steps (RoBERTa, sec. V-B) and 10k of 200k steps (GPT, sec. V-C) train the shared expert."""

ANNEAL_PERCENT = 5
"""Annealing length in percent of --train-iters when --dts-anneal-iters is not given. EvoMoE sec.
V-B: tau goes from 2.0 to 0.3 over the 5k steps after T_S, of 100k (5%; 5k of 200k for GPT, 2.5%)."""


@dataclass(frozen=True)
class EvoMoEPhases:
    """The resolved EvoMoE schedule, in optimizer steps (0-based iterations).

    Attributes:
        shared_expert_iters: T_S, steps of stage 1 (0 without expert-diversify).
        anneal_iters: steps over which tau goes from max to min, starting when the gate starts.
        top1_iter: T_D, the first step of the Top-1 gate.
    """

    shared_expert_iters: int
    anneal_iters: int
    top1_iter: int

    def describe(self, train_iters: int) -> str:
        """One line for the start-up log."""
        return (
            f"EvoMoE schedule: T_S = {self.shared_expert_iters}, tau annealed over {self.anneal_iters} "
            f"iterations, T_D = {self.top1_iter} (of {train_iters} iterations)"
        )

    def as_dict(self) -> dict:
        return {
            "shared_expert_iters": self.shared_expert_iters,
            "dts_anneal_iters": self.anneal_iters,
            "dts_top1_iter": self.top1_iter,
        }


def resolve_evomoe_phases(
    train_iters: int,
    shared_expert_iters: Optional[int] = None,
    anneal_iters: Optional[int] = None,
    top1_iter: Optional[int] = None,
    expert_diversify: bool = True,
) -> EvoMoEPhases:
    """T_S, annealing length and T_D from the flags, with the paper's defaults where a flag is None.

    The only place these defaults are computed: T_S = 5% and annealing = 5% of ``train_iters``
    (rounded down, at least one step each), T_D = T_S + annealing. Without expert-diversify T_S is 0 (the gate
    starts at step 0).
    """
    if shared_expert_iters is None:
        shared_expert_iters = max(1, train_iters * SHARED_EXPERT_PERCENT // 100)
    if not expert_diversify:
        shared_expert_iters = 0
    if anneal_iters is None:
        anneal_iters = max(1, train_iters * ANNEAL_PERCENT // 100)
    if top1_iter is None:
        top1_iter = shared_expert_iters + anneal_iters
    return EvoMoEPhases(shared_expert_iters, anneal_iters, top1_iter)


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
    raise InputError(f"unknown --dts-temperature-schedule {schedule!r}")


def evomoe_phase(iteration: int, options: DTSConfig) -> str:
    """Phase of step ``iteration`` (0-based): expert_diversify, gate_sparsify or top1."""
    if options.expert_diversify and iteration < options.shared_expert_iters:
        return EXPERT_DIVERSIFY
    if not options.gate_sparsify:
        return TOP1
    return TOP1 if iteration >= options.dts_top1_iter else GATE_SPARSIFY


def evomoe_temperature(iteration: int, options: DTSConfig) -> float:
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


def diversify_iteration(options: DTSConfig) -> int | None:
    """The step before which experts are spawned (T_S), or None when stage 1 is skipped."""
    if not options.expert_diversify:
        return None
    return options.shared_expert_iters
