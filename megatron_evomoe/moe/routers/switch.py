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

import functools
from typing import Optional

import torch

from megatron_evomoe.moe.router import Router, RoutingDecision, fp32_gate_logits
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import SOFTMAX_TOPK, ServingGate, gate_tensor

from megatron_evomoe.moe.routers.switch_config import SwitchConfig


def top1_routing(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 of ``probs`` ``[T, E]``: (weights ``[T, E]`` with only the max kept, bool map)."""
    top1 = probs.argmax(dim=-1, keepdim=True)
    routing_map = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top1, True)
    return probs * routing_map, routing_map


def _draw_seed() -> int:
    """A seed from the default CPU generator (restored by activation recomputation)."""
    return int(torch.randint(0, 2**62, (), dtype=torch.int64))


def jitter_noise(like: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """fp32 ``U(1 - eps, 1 + eps)`` shaped like ``like``, from a generator seeded with ``seed``."""
    generator = torch.Generator(device=like.device).manual_seed(seed)
    return torch.empty(like.shape, dtype=torch.float32, device=like.device).uniform_(
        1.0 - eps, 1.0 + eps, generator=generator
    )


def multiplicative_jitter(router_input: torch.Tensor, eps: float) -> torch.Tensor:
    """``x * U(1 - eps, 1 + eps)`` elementwise (Switch sec. 2.4)."""
    return router_input * jitter_noise(router_input, eps, _draw_seed())


class SwitchRouter(Router):
    """Top-1 gate with the Switch balance loss."""

    Config = SwitchConfig

    LOSS_NAMES = ("balance",)

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        self.weight = self.new_gate_weight()

    def serving_gate(self, state: RoutingState) -> ServingGate:
        """Top-1 of softmax(x W^T), weight p not renormalised (no jitter outside training)."""
        options = {"temperature": 1.0, "top_k": 1, "normalize": False}
        return ServingGate(SOFTMAX_TOPK, options, {"weight": gate_tensor(self.weight)})

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        jitter = None
        if self.training and self.options.jitter_eps > 0:
            # Drawn in fp32 (bf16 would round it away); backward draws it again from the seed.
            jitter = functools.partial(jitter_noise, eps=self.options.jitter_eps, seed=_draw_seed())
        logits = fp32_gate_logits(hidden, self.weight, jitter)
        probs = torch.softmax(logits, dim=-1)  # [T, E]
        weights, routing_map = top1_routing(probs)
        decision = RoutingDecision(probs=weights, routing_map=routing_map, gate=probs)
        self.add_balance_loss(decision, probs, routing_map)  # f_i: top-1 choices
        self.add_z_loss(decision, logits)
        return decision
