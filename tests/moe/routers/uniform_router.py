"""A router written as a test fixture: each token goes to one expert drawn uniformly at random.

It shows that adding a router is this file plus one registry line (``test_new_router.py`` registers
it); nothing else in the repository knows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router import Router, RoutingDecision
from megatron_evomoe.moe.router_config import RouterConfig


class UniformRouter(Router):
    """Top-1 routing to a uniformly random expert with a fixed combine weight; no parameters, no loss."""

    @dataclass
    class Config(RouterConfig):
        aux_loss_coeff: float = 0.0
        """Random routing is balanced in expectation: no balance loss."""
        uniform_gate_weight: float = 1.0
        """Weight of the chosen expert's output."""

        TOPK_CHOICES = (1,)

        def __post_init__(self) -> None:
            super().__post_init__()
            if self.uniform_gate_weight <= 0:
                raise InputError(f"--uniform-gate-weight must be > 0, got {self.uniform_gate_weight}")

    LOSS_NAMES = ()

    @classmethod
    def gate_flops(cls, config, state) -> float:
        """A random draw: no floating-point work."""
        return 0.0

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        expert = torch.randint(0, self.num_experts, (hidden.shape[0],), device=hidden.device)  # [T]
        routing_map = F.one_hot(expert, self.num_experts).bool()  # [T, E]
        return RoutingDecision(probs=routing_map.float() * self.options.uniform_gate_weight, routing_map=routing_map)
