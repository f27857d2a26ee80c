"""EvoMoE's Dense-To-Sparse gate (paper sec. III-C, eq. 8-10, Algorithm 2).

This router's ``Config`` (the gate itself is in ``dts.py``): the EvoMoE schedule (shared expert ->
diversify -> DTS gate -> Top-1), its paper defaults and the diversify options. Free of torch, so that
the flag parser lists its flags and tools that only plan runs read the schedule without loading torch or
megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from megatron_evomoe.config_flags import flag
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe import schedule
from megatron_evomoe.moe.router_config import RouterConfig, RoutingState, RunShape


@dataclass
class DTSConfig(RouterConfig):
    """EvoMoE (paper sec. III): shared expert -> diversify -> DTS gate -> Top-1."""

    METHOD_NAME = "EvoMoE"

    aux_loss_coeff: float = 0.1
    """EvoMoE eq. 10 and sec. V-A: alpha = 0.1."""
    shared_expert_iters: Optional[int] = flag(None, name="--evomoe-shared-expert-iters")
    """T_S, iterations that train the single shared expert before experts are spawned (default 5%
    of --train-iters, the paper's; moe/schedule.py)."""
    mask_ratio: float = flag(0.2, name="--evomoe-mask-ratio")
    """Fraction of each spawned expert's weights set to zero by the diversify mask."""
    mask_granularity: Literal["element", "neuron"] = flag("element", name="--evomoe-mask-granularity")
    """'element' masks individual weights; 'neuron' masks whole hidden units of the FFN."""
    mask_rescale: bool = flag(False, name="--evomoe-mask-rescale")
    """Divide the kept weights by (1 - mask ratio) at diversify (element masks: fc1 and fc2; neuron
    masks: fc2), so spawned experts keep the shared expert's output scale in expectation; off by
    default (the paper does not rescale)."""
    optimizer_state: Optional[Literal["reset", "masked_copy"]] = flag(None, name="--evomoe-optimizer-state")
    """Adam moments of spawned experts: the shared expert's under the same mask (masked_copy; default),
    or zeros (reset; default with --use-distributed-optimizer, whose shards do not hold the shared
    expert's moments; Adam's bias correction does not restart: megatron keeps one step count)."""
    expert_diversify: bool = flag(True, name="--no-expert-diversify")
    """Spawn the experts from the shared expert at T_S; --no-expert-diversify is the ablation 'w/o
    expert-diversify': random experts and the DTS gate from iteration 0."""
    gate_sparsify: bool = flag(True, name="--no-gate-sparsify")
    """The DTS gate after T_S; --no-gate-sparsify is the ablation 'w/o gate-sparsify': diversify, then
    the Switch Top-1 gate."""
    dts_threshold: float = 0.001
    """c: experts with gate weight <= c are not computed (paper: 0.001)."""
    dts_max_temperature: float = 2.0
    """tau at the start of the gate (paper: 2.0)."""
    dts_min_temperature: float = 0.3
    """tau at the end of the annealing (paper: 0.3)."""
    dts_anneal_iters: Optional[int] = None
    """Iterations over which tau goes from max to min after T_S (default 5% of --train-iters, the
    paper's)."""
    dts_temperature_schedule: Literal["linear", "exponential", "cosine"] = "linear"
    """How tau goes from max to min."""
    dts_top1_iter: Optional[int] = None
    """T_D: from here the gate is Top-1 (default T_S + anneal iters)."""
    dts_top1_noise: bool = False
    """Keep gumbel noise in training after T_D, as Algorithm 2 does (off by default: docs/routers.md)."""

    TOPK_CHOICES = (1,)
    TOPK_REASON = (
        "the DTS gate anneals to Top-1 by definition (EvoMoE sec. III-C); before T_D the number of experts "
        "per token is set by --dts-threshold, not by a k"
    )
    BALANCE_LOSS = True
    ROUTER_LOGITS = True  # x W_g, before the Gumbel noise and the temperature

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, value in (
            ("evomoe-shared-expert-iters", self.shared_expert_iters),
            ("dts-anneal-iters", self.dts_anneal_iters),
            ("dts-top1-iter", self.dts_top1_iter),
        ):
            if value is not None and value < 0:
                raise InputError(f"--{name} must be >= 0, got {value}")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise InputError("--evomoe-mask-ratio must be in [0, 1)")
        if not 0.0 <= self.dts_threshold < 1.0:
            raise InputError(f"--dts-threshold must be in [0, 1), got {self.dts_threshold}")
        if not self.dts_max_temperature >= self.dts_min_temperature > 0:
            raise InputError("--dts-max-temperature must be >= --dts-min-temperature > 0")
        shared, top1 = self.shared_expert_iters, self.dts_top1_iter
        if shared is not None and top1 is not None and top1 < shared:
            raise InputError(f"--dts-top1-iter {top1} is before the end of stage 1 (T_S = {shared})")
        if not self.expert_diversify and not self.gate_sparsify:
            raise InputError(
                "--no-expert-diversify and --no-gate-sparsify together are plain Switch: "
                "use --moe-router-type switch"
            )

    def resolved(self, run: RunShape) -> "DTSConfig":
        """T_S, the annealing length and T_D from the paper's fractions of --train-iters
        (``schedule.resolve_evomoe_phases``), and the Adam-state default of the optimizer."""
        phases = schedule.resolve_evomoe_phases(
            run.train_iters,
            shared_expert_iters=self.shared_expert_iters,
            anneal_iters=self.dts_anneal_iters,
            top1_iter=self.dts_top1_iter,
            expert_diversify=self.expert_diversify,
        )
        optimizer_state = self.optimizer_state
        if optimizer_state is None:
            optimizer_state = "reset" if run.use_distributed_optimizer else "masked_copy"
        if optimizer_state == "masked_copy" and run.use_distributed_optimizer:
            raise InputError(
                "--evomoe-optimizer-state masked_copy needs the full optimizer state on each rank: "
                "not available with --use-distributed-optimizer (use reset)"
            )
        return self.replace(
            shared_expert_iters=phases.shared_expert_iters,
            dts_anneal_iters=phases.anneal_iters,
            dts_top1_iter=phases.top1_iter,
            optimizer_state=optimizer_state,
        )

    # ------------------------------------------------------------------------------ phases
    def phases(self) -> schedule.EvoMoEPhases:
        return schedule.EvoMoEPhases(self.shared_expert_iters, self.dts_anneal_iters, self.dts_top1_iter)

    def routing_state(self, iteration: int) -> RoutingState:
        return RoutingState(
            iteration=iteration,
            phase=schedule.evomoe_phase(iteration, self),
            temperature=schedule.evomoe_temperature(iteration, self),
        )

    def schedule_end(self) -> int:
        start = self.shared_expert_iters if self.expert_diversify else 0
        return max(self.dts_top1_iter, start + self.dts_anneal_iters)

    def serving_state(self, iteration: int, train_iters: int) -> Optional[RoutingState]:
        """The final state while the gate is not in it yet (the dense DTS mixture, or Top-1 at a tau
        not yet annealed); None in stage 1, which has no experts yet."""
        current = self.routing_state(iteration)
        if current.phase == schedule.EXPERT_DIVERSIFY:
            return None
        final = self.final_state(train_iters)
        if (final.phase, final.temperature) == (current.phase, current.temperature):
            return None
        return final

    def shared_expert_stage(self, state: RoutingState) -> bool:
        return state.phase == schedule.EXPERT_DIVERSIFY

    def needs_shared_expert(self) -> bool:
        return self.expert_diversify

    def diversify_iteration(self) -> Optional[int]:
        return schedule.diversify_iteration(self)

    def spawned_experts_flags(self, iteration: int) -> list:
        """T_S = ``iteration``: the gate starts there at tau max, without a second diversify."""
        return ["--evomoe-shared-expert-iters", str(iteration)] if self.expert_diversify else []

    def schedule_meta(self) -> dict:
        return {
            **self.phases().as_dict(),
            "expert_diversify": self.expert_diversify,
            "gate_sparsify": self.gate_sparsify,
            "dts_top1_noise": self.dts_top1_noise,
        }

    def transition_name(self, old_phase: str, new_phase: str) -> str:
        """``T_S`` (leaving the shared-expert stage), ``T_D`` (entering Top-1), else the new phase."""
        if old_phase == schedule.EXPERT_DIVERSIFY:
            return "T_S"
        if new_phase == schedule.TOP1:
            return "T_D"
        return new_phase

    def describe_schedule(self, train_iters: int) -> str:
        text = self.phases().describe(train_iters)
        if not self.expert_diversify:
            text += "; w/o expert-diversify: no shared expert, the gate starts at step 0"
        if not self.gate_sparsify:
            text += "; w/o gate-sparsify: the Switch Top-1 gate (tau 1) from T_S"
        return text

    def peak_experts_per_token(self, num_experts: int) -> float:
        """Right after T_S the gate at tau = max keeps nearly every expert (g' ~ 1/E > c)."""
        return float(num_experts) if self.gate_sparsify else float(self.topk)
