"""Routing statistics of one MoE layer, accumulated over the micro-batches of an optimizer step.

They feed the logs (tokens per expert, experts per token, dropped fraction, aux losses) and the
FLOPs accounting (only the experts a token visits are charged). Kept as plain tensors on the layer
(not buffers: they are not model state and never enter a checkpoint).
"""

from __future__ import annotations

from typing import Dict

import torch

# Order of the scalar slots in `as_vector`; per-expert counts follow them.
SCALARS = ("num_tokens", "num_assignments", "num_unrouted", "num_microbatches")


class RoutingStats:
    """Sums over the micro-batches of one step; ``reset()`` after each read."""

    def __init__(self, num_experts: int, loss_names: tuple[str, ...] = ()):
        self.num_experts = num_experts
        self.loss_names = tuple(loss_names)
        self.reset()

    def reset(self) -> None:
        self.tokens_per_expert = torch.zeros(self.num_experts, dtype=torch.float64)
        self.scalars = torch.zeros(len(SCALARS), dtype=torch.float64)
        self.losses: Dict[str, float] = {name: 0.0 for name in self.loss_names}

    def record(self, routing_map: torch.Tensor, logged_losses: Dict[str, torch.Tensor]) -> None:
        """Add one micro-batch: ``routing_map`` ``[T, E]`` bool after capacity dropping."""
        with torch.no_grad():
            per_token = routing_map.sum(dim=1)
            self.tokens_per_expert += routing_map.sum(dim=0).to("cpu", torch.float64)
            self.scalars += torch.tensor(
                [routing_map.shape[0], float(per_token.sum()), float((per_token == 0).sum()), 1.0],
                dtype=torch.float64,
            )
            for name, value in logged_losses.items():
                self.losses[name] = self.losses.get(name, 0.0) + float(value)

    def record_dense(self, num_tokens: int) -> None:
        """Add one micro-batch of the EvoMoE shared-expert phase (every token, one FFN, no gate)."""
        self.scalars += torch.tensor([num_tokens, num_tokens, 0.0, 1.0], dtype=torch.float64)
