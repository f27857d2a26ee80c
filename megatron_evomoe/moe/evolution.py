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

from megatron_evomoe.config import ModelConfig
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
        """Push the state of step ``iteration`` to all MoE layers; returns transition events."""
        self.apply_state(model_chunks, self.routing_state(iteration))
        return []

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

    def routers_active(self, iteration: int) -> bool:
        """False while EvoMoE trains the shared expert (no gate computed)."""
        return self.routing_state(iteration).phase != schedule.EXPERT_DIVERSIFY
