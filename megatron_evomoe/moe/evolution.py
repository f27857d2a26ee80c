"""The phase controller: the only owner of "which phase are we in" (DESIGN.md).

Before every optimizer step the training loop calls :meth:`PhaseController.before_step`; the
controller computes the routing state of that step from the iteration alone (``moe/schedule.py``),
pushes it to every MoE layer, and performs the one-off transitions that the phase change needs
(EvoMoE's expert-diversify at T_S). Because the state is a pure function of the iteration, a resume
at any step (T_S and T_D included) continues exactly.
"""

from __future__ import annotations

from typing import Iterable, List

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


class PhaseController:
    """Routing phase and temperature per iteration, for every router type."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.router_type = config.moe_router.router_type

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
            f"shared expert (mask ratio {options.mask_ratio}, {options.mask_granularity} masks, "
            f"Adam moments: {options.optimizer_state}); DTS gate initialised"
        )

    def final_routing_state(self) -> RoutingState:
        """The state after training: EvoMoE's Top-1 gate, StableMoE's frozen router (fine-tuning, eval)."""
        if self.router_type == "dts":
            return RoutingState(
                iteration=-1, phase=schedule.TOP1, temperature=self.config.evomoe.dts_min_temperature
            )
        if self.router_type == "stablemoe":
            return RoutingState(iteration=-1, phase=schedule.STABLEMOE_STAGE2)
        return RoutingState(iteration=-1, phase=schedule.SPARSE)

    def apply_state(self, model_chunks, state: RoutingState) -> None:
        """Push an explicit routing state to every MoE layer (fine-tuning uses the final one)."""
        for layer in moe_layers(model_chunks):
            layer.set_routing_state(state)
