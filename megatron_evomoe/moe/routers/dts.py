"""EvoMoE's Dense-To-Sparse gate (paper sec. III-C, eq. 8-10, Algorithm 2).

g'(x) = softmax((x W_g + zeta) / tau), zeta ~ Gumbel(0, 1) in training only (eq. 8). Phase
``gate_sparsify``: every expert with g'_i > c is computed, weighted by g'_i, NOT renormalised (eq. 9);
a token may visit 0..N experts. Phase ``top1`` (from T_D): only argmax_i g'_i, weight g'_i as in
Switch; gumbel noise only with --dts-top1-noise. In the "w/o gate-sparsify" ablation the controller
runs ``top1`` from T_S at tau = 1, i.e. the Switch gate. Balance loss (eq. 10) in both phases:
alpha * N * sum_i (count_i / |B|^2) * sum_x g'_i(x) with count_i = tokens whose g_i > 0. During
stage 1 (``expert_diversify``) the MoE layer bypasses the router entirely.

tau and the phase come from the phase controller (pure functions of the iteration,
``moe/schedule.py``), never from a counter in here, so resume is exact and the temperature changes
once per optimizer step. The EvoMoE schedule, its paper defaults and the diversify options are this
router's ``Config`` (``dts_config.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from megatron_evomoe.moe import schedule
from megatron_evomoe.moe.router import Router, RoutingDecision
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import SOFTMAX_THRESHOLD, SOFTMAX_TOPK, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.dts_config import DTSConfig
from megatron_evomoe.moe.routers.switch import top1_routing
from megatron_evomoe.seeding import seeded_generator


def gumbel_noise(shape, device, dtype=torch.float32) -> torch.Tensor:
    """Samples of Gumbel(0, 1): -log(-log(U)), U ~ U(0, 1) kept away from 0 and 1."""
    uniform = torch.rand(shape, device=device, dtype=dtype).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(uniform))


def dts_gate(logits: torch.Tensor, temperature: float, threshold: float, noise: Optional[torch.Tensor] = None):
    """Eq. 8-9 for ``logits`` ``[T, E]``: (g' ``[T, E]``, kept weights ``[T, E]``, kept map)."""
    if noise is not None:
        logits = logits + noise
    gate = torch.softmax(logits / temperature, dim=-1)
    kept_map = gate > threshold
    return gate, gate * kept_map, kept_map


class DTSRouter(Router):
    """The DTS gate; W_g is (re)initialised by the controller when experts are spawned."""

    Config = DTSConfig

    FIXED_TOPK = False  # 0..E experts per token while the gate is dense

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        self.weight = self.new_gate_weight()

    @classmethod
    def gate_flops(cls, config, state) -> float:
        """No gate while the shared expert trains (stage 1); 2*h*E afterwards."""
        if state.phase == schedule.EXPERT_DIVERSIFY:
            return 0.0
        return super().gate_flops(config, state)

    @torch.no_grad()
    def reset_gate(self, seed: int) -> None:
        """Draw W_g afresh (at T_S), from (seed, layer): the same on every rank and layout."""
        generator = seeded_generator("dts_gate", seed, self.layer_number)
        fresh = torch.randn(self.weight.shape, generator=generator) * self.config.init_method_std
        self.weight.copy_(fresh.to(self.weight.dtype))

    def serving_gate(self, state: RoutingState) -> Optional[ServingGate]:
        """After T_D: top-1 of softmax(x W_g / tau), weight g' not renormalised (as Switch); before it,
        the DTS mixture (every g' > c, eq. 9); in stage 1 no gate (the layer is the shared expert)."""
        weight = {"weight": gate_tensor(self.weight)}
        if state.phase == schedule.TOP1:
            options = {"temperature": state.temperature, "top_k": 1, "normalize": False}
            return ServingGate(SOFTMAX_TOPK, options, weight)
        if state.phase == schedule.GATE_SPARSIFY:
            options = {"temperature": state.temperature, "threshold": self.options.dts_threshold}
            return ServingGate(SOFTMAX_THRESHOLD, options, weight)
        return None

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        state = self.routing_state
        logits = self.gate_logits(hidden, self.weight)
        use_noise = self.training and (state.phase == schedule.GATE_SPARSIFY or self.options.dts_top1_noise)
        noise = gumbel_noise(logits.shape, logits.device) if use_noise else None
        if state.phase == schedule.TOP1:
            gate, _, _ = dts_gate(logits, state.temperature, 0.0, noise)
            probs, routing_map = top1_routing(gate)
        else:
            gate, probs, routing_map = dts_gate(logits, state.temperature, self.options.dts_threshold, noise)
        decision = RoutingDecision(probs=probs, routing_map=routing_map, gate=gate)
        self.add_balance_loss(decision, gate, routing_map)  # eq. 10: count_i = tokens with g_i > 0
        self.add_z_loss(decision, logits)  # the learned logits: tau and zeta are the schedule's
        return decision
