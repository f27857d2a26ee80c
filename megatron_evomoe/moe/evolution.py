"""The phase controller: the only owner of "which phase are we in" (DESIGN.md).

Before every optimizer step the training loop calls :meth:`PhaseController.before_step`; the
controller computes the routing state of that step from the iteration alone (``moe/schedule.py``),
pushes it to every MoE layer, and performs the one-off transitions that the phase change needs
(EvoMoE's expert-diversify at T_S). Because the state is a pure function of the iteration, a resume
at any step (T_S and T_D included) continues exactly.
"""

from __future__ import annotations

from typing import Iterable, List, Optional

import torch
from megatron.core import parallel_state

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.moe.diversify import spawn_experts
from megatron_evomoe.training.optimizer_state import overwrite_parameter
from megatron_evomoe.moe import schedule
from megatron_evomoe.moe.layer import MoELayer
from megatron_evomoe.moe.router import RoutingState


def moe_layers(model_chunks: Iterable[torch.nn.Module]) -> List[MoELayer]:
    """Every MoE layer of this rank's model chunks, in layer order."""
    layers = [m for chunk in model_chunks for m in chunk.modules() if isinstance(m, MoELayer)]
    return sorted(layers, key=lambda layer: layer.layer_number or 0)


def routing_schedule(config: ModelConfig) -> dict:
    """The resolved phase boundaries of the configured router (run metadata and start-up log).

    EvoMoE: T_S, the annealing length and T_D (``moe.schedule.EvoMoEPhases``) plus the ablation
    switches; StableMoE: the length of stage 1; others: empty (one phase).
    """
    router = config.moe_router.router_type
    if router == "dts":
        options = config.evomoe
        phases = schedule.EvoMoEPhases(options.shared_expert_iters, options.dts_anneal_iters, options.dts_top1_iter)
        return {
            **phases.as_dict(),
            "expert_diversify": options.expert_diversify,
            "gate_sparsify": options.gate_sparsify,
            "dts_top1_noise": options.dts_top1_noise,
        }
    if router == "stablemoe":
        return {"stablemoe_stage1_iters": config.moe_router.stablemoe_stage1_iters}
    return {}


def describe_schedule(config: ModelConfig, train_iters: int) -> str | None:
    """One start-up line with the resolved phase boundaries (None for single-phase routers)."""
    router = config.moe_router.router_type
    if router == "dts":
        options = config.evomoe
        phases = schedule.EvoMoEPhases(options.shared_expert_iters, options.dts_anneal_iters, options.dts_top1_iter)
        text = phases.describe(train_iters)
        if not options.expert_diversify:
            text += "; w/o expert-diversify: no shared expert, the gate starts at step 0"
        if not options.gate_sparsify:
            text += "; w/o gate-sparsify: the Switch Top-1 gate (tau 1) from T_S"
        return text
    if router == "stablemoe":
        stage1 = config.moe_router.stablemoe_stage1_iters
        return f"StableMoE schedule: stage 1 for {stage1} iterations, routing frozen from iteration {stage1}"
    return None


class PhaseController:
    """Routing phase and temperature per iteration, for every router type."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.router_type = config.moe_router.router_type
        self.applied_state: Optional[RoutingState] = None
        """The state last pushed to the MoE layers: the one the model's latest step trained with."""

    def routing_state(self, iteration: int) -> RoutingState:
        """The state every router sees during step ``iteration`` (pure)."""
        if self.router_type == "dts":
            options = self.config.evomoe
            return RoutingState(
                iteration=iteration,
                phase=schedule.evomoe_phase(iteration, options),
                temperature=schedule.evomoe_temperature(iteration, options),
            )
        if self.router_type == "stablemoe":
            stage1 = self.config.moe_router.stablemoe_stage1_iters
            phase = schedule.STABLEMOE_STAGE1 if iteration < stage1 else schedule.STABLEMOE_STAGE2
            return RoutingState(iteration=iteration, phase=phase)
        return RoutingState(iteration=iteration, phase=schedule.SPARSE)

    def before_step(self, iteration: int, model_chunks, optimizer=None) -> List[str]:
        """Push the state of step ``iteration`` to all MoE layers; returns transition events.

        At T_S (EvoMoE) the experts are spawned from the shared expert and the gate is initialised,
        in the model and in the optimizer's master copy, before the step runs.
        """
        events = []
        if self.router_type == "dts" and iteration == schedule.diversify_iteration(self.config.evomoe):
            events.append(self.diversify(model_chunks, optimizer))
        state = self.routing_state(iteration)
        if iteration > 0 and self.routing_state(iteration - 1).phase != state.phase:
            events.append(f"phase {self.routing_state(iteration - 1).phase} -> {state.phase}")
        self.apply_state(model_chunks, state)
        return events

    def diversify(self, model_chunks, optimizer=None) -> str:
        """EvoMoE's expert-diversify on every MoE layer of this rank (and the optimizer's copy)."""
        options = self.config.evomoe
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        tp_size = parallel_state.get_tensor_model_parallel_world_size()
        masked_copy = options.optimizer_state == "masked_copy"
        layers = moe_layers(model_chunks)
        for layer in layers:
            spawned = spawn_experts(layer, options, self.config.seed, tp_rank, tp_size)
            layer.router.reset_gate(self.config.seed)
            if optimizer is None:
                continue
            for item in spawned:
                overwrite_parameter(
                    optimizer, item.weight, item.source if masked_copy else None, item.mask
                )
            overwrite_parameter(optimizer, layer.router.weight)
        return (
            f"expert-diversify: spawned {self.config.num_moe_experts} experts per MoE layer from the "
            f"shared expert (mask ratio {options.mask_ratio}, {options.mask_granularity} masks"
            + (", kept weights rescaled by 1/(1 - ratio)" if options.mask_rescale else "") + ", "
            f"Adam moments: {options.optimizer_state}); DTS gate initialised"
        )

    def final_routing_state(self, train_iters: Optional[int] = None) -> RoutingState:
        """The state the model is served with: that of the last training step, ``train_iters - 1``.

        So the gate after training computes what the last step trained (EvoMoE's Top-1 at the
        final tau, the w/o-gate-sparsify ablation's tau = 1 softmax, StableMoE's frozen router --
        or the stage a shorter run ended in). Without ``train_iters`` (a model whose training
        length is unknown): the state once every phase of the schedule has begun.
        """
        if train_iters is None:
            train_iters = self.schedule_end() + 1
        return self.routing_state(max(train_iters - 1, 0))

    def serving_state(self, iteration: int, train_iters: int) -> Optional[RoutingState]:
        """The final routing state where evaluating in it differs from evaluating step ``iteration``'s.

        That is EvoMoE's gate before its final state (the dense DTS mixture, or Top-1 at a tau not
        yet annealed). None otherwise: single-phase routers; StableMoE, whose stage-1 evaluation
        already routes with the distilled router it will freeze; and EvoMoE's stage 1, which has no
        experts yet.
        """
        if self.router_type != "dts":
            return None
        current = self.routing_state(iteration)
        if current.phase == schedule.EXPERT_DIVERSIFY:
            return None
        final = self.final_routing_state(train_iters)
        if (final.phase, final.temperature) == (current.phase, current.temperature):
            return None
        return final

    def schedule_end(self) -> int:
        """The first iteration from which the routing state no longer changes."""
        if self.router_type == "dts":
            options = self.config.evomoe
            start = options.shared_expert_iters if options.expert_diversify else 0
            return max(options.dts_top1_iter, start + options.dts_anneal_iters)
        if self.router_type == "stablemoe":
            return self.config.moe_router.stablemoe_stage1_iters
        return 0

    def apply_state(self, model_chunks, state: RoutingState) -> None:
        """Push an explicit routing state to every MoE layer (fine-tuning uses the final one)."""
        for layer in moe_layers(model_chunks):
            layer.set_routing_state(state)
        self.applied_state = state
