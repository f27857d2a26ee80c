"""GShard top-2 router (Lepikhin et al. 2020, "GShard", sec. 2.2 and Algorithm 1).

g = softmax(x W^T) in fp32. Each token's best expert e1 and second-best e2 get the weights
g1 / (g1 + g2) and g2 / (g1 + g2) (normalised over the pair). With random routing (the paper's, on by
default; ``--no-gshard-random-routing`` turns it off) the token is sent to e2 only if
2 * g2 / (g1 + g2) > u, u ~ U(0, 1) (Algorithm 1, line 17): a weak second choice is mostly skipped,
saving capacity; e1 keeps its normalised weight either way. Random routing is applied in training
only, so evaluation is deterministic (both experts).

Aux loss: the paper's (1/E) sum_e (c_e / S) m_e with c_e the number of tokens whose first choice is
e and m_e the mean gate, scaled by E^2 (see ``moe/balance.py``), alpha = 0.01.

Capacity: the MoE layer applies ``--moe-expert-capacity-factor`` with k = 2 (C = 2 f S / E). GShard
fills experts with all first choices before any second choice; with ``--moe-token-drop-policy
probs`` the layer keeps the largest weights, and a first choice's weight (>= 0.5) is never below a
second choice's (<= 0.5), so first choices win as in the paper (by weight rather than by position
within each group).
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_evomoe.moe.router import Router, RoutingDecision
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import SOFTMAX_TOPK, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.gshard_config import GShardConfig


def top2_gating(
    probs: torch.Tensor, second_draw: Optional[torch.Tensor] = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GShard's top-2 combine weights for ``probs`` ``[T, E]``.

    Args:
        probs: softmax gate values.
        second_draw: ``[T]`` uniform samples for random routing of the second expert (None: always).

    Returns:
        ``(weights [T, E], routing_map [T, E] bool, first_choice_map [T, E] bool)``.
    """
    top_values, top_index = probs.topk(2, dim=-1)  # [T, 2]
    denom = (top_values[:, 0] + top_values[:, 1]).clamp_min(torch.finfo(probs.dtype).eps)
    norm = top_values / denom.unsqueeze(1)  # [T, 2]: g1, g2 normalised over the pair
    first_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_index[:, :1], True)
    second_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_index[:, 1:], True)
    if second_draw is not None:
        second_map &= (2.0 * norm[:, 1].detach() > second_draw).unsqueeze(1)
    weights = torch.zeros_like(probs).scatter(1, top_index, norm) * (first_map | second_map)
    return weights, first_map | second_map, first_map


class GShardRouter(Router):
    """Top-2 gate with the GShard balance loss and optional random routing of the second expert."""

    Config = GShardConfig

    LOSS_NAMES = ("balance",)

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        if config.moe_router_topk != 2:
            raise ValueError(f"gshard is a top-2 gate: --moe-router-topk must be 2, got {config.moe_router_topk}")
        self.weight = self.new_gate_weight()

    def serving_gate(self, state: RoutingState) -> ServingGate:
        """Both of the top-2 experts (random routing is for training only), weights normalised over the pair."""
        options = {"temperature": 1.0, "top_k": 2, "normalize": True}
        return ServingGate(SOFTMAX_TOPK, options, {"weight": gate_tensor(self.weight)})

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        logits = self.gate_logits(hidden, self.weight)  # [T, E]
        probs = torch.softmax(logits, dim=-1)
        draw = None
        if self.training and self.options.gshard_random_routing:
            draw = torch.rand(probs.shape[0], device=probs.device, dtype=probs.dtype)
        weights, routing_map, first_map = top2_gating(probs, draw)
        decision = RoutingDecision(probs=weights, routing_map=routing_map, gate=probs)
        self.add_balance_loss(decision, probs, first_map)  # c_e: first choices only
        self.add_z_loss(decision, logits)
        return decision
