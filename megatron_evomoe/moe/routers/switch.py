"""Switch Transformer top-1 router (Fedus et al. 2021, "Switch Transformers").

p(x) = softmax(x W^T), computed in fp32 whatever the model precision ("selective precision",
sec. 2.4). Each token goes to argmax_i p_i(x) with weight p_i(x), not renormalised (eq. 2).
Balance loss (eq. 4): alpha * N * sum_i f_i * P_i, with f_i the fraction of tokens whose top-1 is i
(counted before capacity dropping) and P_i the mean router probability of i; alpha = 0.01.
Multiplicative jitter U(1 - eps, 1 + eps) on the *router input only* during training, eps = 0.01 by
default (``--moe-input-jitter-eps``; 0 turns it off): in the paper's study of exploration strategies
(appendix "Encouraging exploration across experts", Table 11: argmax, sampling, input dropout, input
jitter) jitter gave the best quality, and the authors' Mesh TensorFlow router uses eps = 1e-2. Capacity (``--moe-expert-capacity-factor``) and
token dropping are applied by the MoE layer with k = 1; dropped tokens pass through the residual.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.moe.router import Router, RoutingDecision

SWITCH_JITTER_EPS = 1e-2
"""Default eps of the router-input jitter: input jitter was the best exploration strategy in Switch
Transformers' Table 11; 1e-2 is the authors' Mesh TensorFlow default (``switch_jitter``)."""


def top1_routing(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 of ``probs`` ``[T, E]``: (weights ``[T, E]`` with only the max kept, bool map)."""
    top1 = probs.argmax(dim=-1, keepdim=True)
    routing_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top1, True)
    return probs * routing_map, routing_map


def multiplicative_jitter(router_input: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * U(1 - eps, 1 + eps)`` elementwise (Switch sec. 2.4)."""
    noise = torch.empty_like(router_input).uniform_(1.0 - eps, 1.0 + eps)
    return router_input * noise


class SwitchRouter(Router):
    """Top-1 gate with the Switch balance loss."""

    LOSS_NAMES = ("balance",)

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        self.weight = self.new_gate_weight()

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        router_input = hidden.float()  # [T, h]; fp32 before the jitter so bf16 does not round it away
        if self.training and self.options.jitter_eps > 0:
            router_input = multiplicative_jitter(router_input, self.options.jitter_eps)
        probs = torch.softmax(F.linear(router_input, self.weight.float()), dim=-1)  # [T, E]
        weights, routing_map = top1_routing(probs)
        decision = RoutingDecision(probs=weights, routing_map=routing_map)
        self.add_balance_loss(decision, probs, routing_map)  # f_i: top-1 choices
        return decision
