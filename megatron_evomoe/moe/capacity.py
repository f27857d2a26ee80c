"""Expert capacity: at most ``capacity`` tokens per expert, the rest dropped (for that expert).

capacity = ceil(capacity_factor * P / E) for E experts and P (token, expert) pairs of the T local
tokens: P = T * k for routers with a fixed k (Switch k = 1, GShard k = 2, as their papers define
capacity), and P = the pairs the gate actually selected for the content-based gates whose tokens
visit a varying number of experts (EvoMoE's DTS gate, DSelect-k). Either way the factor keeps its
meaning, the slack of each expert over the mean load; sizing a dense DTS phase from k = 1 instead
would drop almost every pair (E = 16, tau = 2: ~16 pairs per token, slots for 1.25). Which tokens
stay is the token-drop policy:

* ``probs`` keeps the tokens with the largest gate weight (megatron-core's default);
* ``position`` keeps the earliest tokens in sequence order (Switch Transformer / GShard).

A dropped (token, expert) pair contributes nothing; a token dropped by all its experts passes
through the layer's residual connection only.
"""

from __future__ import annotations

import math

import torch


def expert_capacity(num_tokens: int, num_experts: int, topk: int, capacity_factor: float) -> int:
    """Tokens an expert may take: ceil(capacity_factor * num_tokens * topk / num_experts).

    For a gate with a varying number of experts per token pass the selected pairs as
    ``num_tokens`` and ``topk = 1``.
    """
    return int(math.ceil(capacity_factor * num_tokens * topk / num_experts))


def apply_capacity(
    probs: torch.Tensor, routing_map: torch.Tensor, capacity: int, policy: str = "probs"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop (token, expert) pairs beyond each expert's capacity.

    Args:
        probs: ``[T, E]`` gate weights.
        routing_map: ``[T, E]`` bool.
        capacity: tokens each expert keeps.
        policy: ``probs`` or ``position``.

    Returns:
        ``(probs, routing_map)`` with the dropped pairs zeroed / cleared.
    """
    num_tokens = routing_map.shape[0]
    if capacity >= num_tokens:
        return probs, routing_map
    if policy == "probs":
        priority = torch.where(routing_map, probs.detach().float(), torch.full_like(probs, -1.0, dtype=torch.float))
    elif policy == "position":
        order = torch.arange(num_tokens, 0, -1, device=probs.device, dtype=torch.float).unsqueeze(1)
        priority = torch.where(routing_map, order.expand_as(probs), torch.zeros_like(probs, dtype=torch.float))
    else:
        raise ValueError(f"unknown token drop policy {policy!r} (expected 'probs' or 'position')")
    keep_idx = torch.topk(priority, k=capacity, dim=0, sorted=False).indices  # [capacity, E]
    keep = torch.zeros_like(routing_map).scatter_(0, keep_idx, True) & routing_map
    return probs * keep, keep
