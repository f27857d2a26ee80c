"""DSelect-k gate (Hazimeh et al. 2021, "DSelect-k: Differentiable Selection in the Mixture of Experts").

Per-example (here per-token) gate with k *single-expert selectors*. Selector j reads
m = ceil(log2 E) numbers z_j(x) = W_z^{(j)} x + b and turns each into a soft bit with the
smooth-step function

    S(t) = 0 for t <= -gamma/2,  1 for t >= gamma/2,  -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2 between,

then weights expert i (binary code l(i), most significant bit first) by
r_j(i) = prod_b (S(z_jb) if l_b(i) = 1 else 1 - S(z_jb)). The gate is
q(x) = sum_j softmax(alpha(x))_j r_j(x) with alpha(x) = W_a x + b (eq. 6 of the paper). While a bit
is in the polynomial region the gate is dense and differentiable; once every S is exactly 0 or 1
each selector is one-hot and q has at most k non-zeros ("sparse at convergence"), so only the
experts with q_i > 0 are computed (``routing_map = q > 0``) and the combine weights are q.

Regularisers (as the official implementation adds them, here averaged over tokens):

* entropy: lambda * sum_j H(r_j(x)), H(r) = -sum_i r_i log(r_i + 1e-6), pushes selectors to binary
  (``--dselectk-entropy-coeff``). The official code (google-research ``dselect_k_moe``,
  ``EntropyRegularizer``) adds 1e-6 x the entropy *summed* over the batch to a batch-mean task loss.
  Here the entropy is averaged over the tokens of the micro-batch (the whole sequence under sequence
  parallelism), so a coefficient keeps its meaning across micro-batch sizes and parallel layouts;
  the default, 1e-6 x tokens per micro-batch (``dselectk_config.official_entropy_coeff``), is the official
  objective exactly;
* when E is not a power of 2, codes >= E are unreachable experts: sum_j 1 / sum_{i<E} r_j(i) keeps
  selectors from putting their mass there (weight 1; it is 1 per selector once they converge).

Initialisation as in the official code: W_z, b_z ~ U(-gamma/100, gamma/100) (all bits start near
1/2, i.e. dense), W_a, b_a ~ U(-0.05, 0.05). k is ``--moe-router-topk``; gamma ``--dselectk-gamma``.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.moe.router import Router, RoutingDecision
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.serving_gate import DSELECTK, ServingGate, gate_tensor
from megatron_evomoe.moe.routers.dselectk_config import DSelectKConfig
from megatron_evomoe.seeding import set_init_rule

ENTROPY_EPS = 1e-6
"""Inside the log of the entropy (official implementation), so that r = 0 contributes 0."""

def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """The cubic smooth-step S(t): 0 below -gamma/2, 1 above gamma/2, C^1 in between."""
    cubic = -2.0 / gamma**3 * t**3 + 3.0 / (2.0 * gamma) * t + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), cubic))


def num_binary_digits(num_experts: int) -> int:
    """m = ceil(log2 E) bits encode E experts (at least 1)."""
    return max(1, math.ceil(math.log2(num_experts)))


def binary_codes(num_experts: int) -> torch.Tensor:
    """``[E, m]`` bool: row i is i in binary, most significant bit first."""
    width = num_binary_digits(num_experts)
    shifts = torch.arange(width - 1, -1, -1)
    return ((torch.arange(num_experts).unsqueeze(1) >> shifts) & 1).bool()


def selector_outputs(z: torch.Tensor, codes: torch.Tensor, gamma: float) -> torch.Tensor:
    """Single-expert selectors: ``z`` ``[T, k, m]`` -> r ``[T, k, E]`` (rows sum to 1 if E = 2^m)."""
    bits = smooth_step(z, gamma).unsqueeze(2)  # [T, k, 1, m]
    factors = torch.where(codes, bits, 1.0 - bits)  # [T, k, E, m]
    return factors.prod(dim=-1)


def dselect_weights(
    z: torch.Tensor, selector_logits: torch.Tensor, codes: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """q = sum_j softmax(alpha)_j r_j: returns (q ``[T, E]``, r ``[T, k, E]``)."""
    r = selector_outputs(z, codes, gamma)
    mix = torch.softmax(selector_logits, dim=-1).unsqueeze(-1)  # [T, k, 1]
    return (mix * r).sum(dim=1), r


def selector_entropy(r: torch.Tensor) -> torch.Tensor:
    """``[T]`` sum over the k selectors of H(r_j) = -sum_i r_ji log(r_ji + 1e-6)."""
    return -(r * torch.log(r + ENTROPY_EPS)).sum(dim=(1, 2))


def unreachable_penalty(r: torch.Tensor) -> torch.Tensor:
    """``[T]`` sum over selectors of 1 / (mass on the E real experts) (non-power-of-2 E only)."""
    return (1.0 / r.sum(dim=-1).clamp_min(ENTROPY_EPS)).sum(dim=-1)


def _uniform(bound: float, tensor: torch.Tensor) -> None:
    torch.nn.init.uniform_(tensor, -bound, bound)


class DSelectKRouter(Router):
    """Per-token DSelect-k gate over E experts with k selectors."""

    Config = DSelectKConfig

    LOSS_NAMES = ("entropy", "unreachable")
    FIXED_TOPK = False  # every expert while the bits are soft, <= k once they are binary

    @classmethod
    def gate_flops(cls, config, state) -> float:
        """k selectors of m = ceil(log2 E) bit logits plus k selector logits: 2*h*k*(m+1)."""
        return 2.0 * config.hidden_size * config.moe_router_topk * (num_binary_digits(config.num_moe_experts) + 1)

    @classmethod
    def architecture_meta(cls, config) -> dict:
        return {"moe_router_topk": config.moe_router_topk}  # the number of selectors

    def __init__(self, config, pg_collection=None):
        super().__init__(config, pg_collection)
        self.k = config.moe_router_topk
        self.gamma = self.options.dselectk_gamma
        num_bits = num_binary_digits(self.num_experts)
        self.num_bits = num_bits
        self.power_of_two = self.num_experts == 2**num_bits
        self.register_buffer("codes", binary_codes(self.num_experts), persistent=False)  # [E, m]
        hidden = config.hidden_size
        self.z_weight = self._param((self.k * num_bits, hidden), partial(_uniform, self.gamma / 100))
        self.z_bias = self._param((self.k * num_bits,), partial(_uniform, self.gamma / 100))
        self.selector_weight = self._param((self.k, hidden), partial(_uniform, 0.05))
        self.selector_bias = self._param((self.k,), partial(_uniform, 0.05))

    def _param(self, shape, rule) -> torch.nn.Parameter:
        data = torch.empty(shape, dtype=torch.float32)
        rule(data)
        param = torch.nn.Parameter(data.to(self.config.params_dtype))
        set_init_rule(param, rule)
        setattr(param, "sequence_parallel", self.config.sequence_parallel)
        return param

    def serving_gate(self, state: RoutingState) -> ServingGate:
        """The gate as in training (it has no phases): q = sum_j softmax(alpha)_j r_j, experts with q > 0."""
        options = {"gamma": self.gamma, "num_selectors": self.k, "num_bits": self.num_bits}
        names = ("z_weight", "z_bias", "selector_weight", "selector_bias")
        return ServingGate(DSELECTK, options, {name: gate_tensor(getattr(self, name)) for name in names})

    def forward(self, hidden: torch.Tensor, token_ids: Optional[torch.Tensor]) -> RoutingDecision:
        x = hidden.float()  # [T, h]
        z = F.linear(x, self.z_weight.float(), self.z_bias.float()).view(-1, self.k, self.num_bits)
        selector_logits = F.linear(x, self.selector_weight.float(), self.selector_bias.float())  # [T, k]
        weights, r = dselect_weights(z, selector_logits, self.codes, self.gamma)  # [T, E], [T, k, E]
        routing_map = weights > 0
        decision = RoutingDecision(probs=weights, routing_map=routing_map, gate=weights)
        if self.training:
            num_tokens = self.sequence_token_count(x.shape[0], x.device)
            losses = {}
            coeff = self.options.dselectk_entropy_coeff
            if coeff > 0:
                losses["entropy"] = coeff * selector_entropy(r).sum() / num_tokens
            if not self.power_of_two:
                losses["unreachable"] = unreachable_penalty(r).sum() / num_tokens
            if losses:
                decision.aux_loss = sum(losses.values())
                decision.logged_losses.update({name: value.detach() for name, value in losses.items()})
        return decision
