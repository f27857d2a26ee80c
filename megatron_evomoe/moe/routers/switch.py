"""Switch Transformer top-1 router (Fedus et al. 2021, "Switch Transformers").

p(x) = softmax(x W^T) in fp32; each token goes to argmax_i p_i(x) with weight p_i(x) (not
renormalised). Balance loss: alpha * N * sum_i f_i * P_i (eq. 4), f_i = fraction of tokens whose
top-1 is i, P_i = mean router probability of i. Optional multiplicative jitter on the router input
during training (sec. 2.4). Capacity and token dropping are applied by the MoE layer.
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_evomoe.moe.balance import count_weighted_balance_loss
from megatron_evomoe.moe.router import Router, RoutingDecision


def top1_routing(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 of ``probs`` ``[T, E]``: (weights ``[T, E]`` with only the max kept, bool map)."""
    top1 = probs.argmax(dim=-1, keepdim=True)
    routing_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top1, True)
    return probs * routing_map, routing_map


class SwitchRouter(Router):
    """Top-1 gate with the Switch balance loss."""

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        self.weight = self.new_gate_weight()

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        if self.training and self.options.jitter_eps > 0:
            eps = self.options.jitter_eps
            hidden = hidden * torch.empty_like(hidden).uniform_(1.0 - eps, 1.0 + eps)
        probs = torch.softmax(self.gate_logits(hidden, self.weight), dim=-1)
        weights, routing_map = top1_routing(probs)
        decision = RoutingDecision(probs=weights, routing_map=routing_map)
        coeff = self.options.aux_loss_coeff
        if self.training and coeff > 0:
            counts = self.sequence_sum(routing_map.sum(0).float())
            num_tokens = self.sequence_sum(torch.tensor(float(probs.shape[0])))
            loss = count_weighted_balance_loss(probs.sum(0), counts, num_tokens, coeff)
            decision.aux_loss = loss
            decision.logged_losses["balance"] = loss.detach()
        return decision
