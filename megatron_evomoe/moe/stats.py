"""Routing statistics of one MoE layer, accumulated over the micro-batches of an optimizer step.

They feed the logs (tokens per expert, experts per token, dropped fraction, aux losses) and the
FLOPs accounting (only the experts a token visits are charged). Sums stay on the device of the
routing decisions until :meth:`RoutingStats.snapshot`, so recording costs no host synchronisation
in the hot path. Plain tensors on the layer, not buffers: they are not model state and never enter
a checkpoint.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch

# Order of the scalar slots; per-expert counts are kept separately. num_selected: (token, expert)
# pairs the gate chose; num_assignments: those left after capacity (computed by the experts).
SCALARS = ("num_tokens", "num_assignments", "num_unrouted", "num_microbatches", "num_selected")


class RoutingStats:
    """Sums over the micro-batches of one step; :meth:`snapshot` reads them, :meth:`reset` clears."""

    def __init__(self, num_experts: int, loss_names: tuple[str, ...] = ()):
        self.num_experts = num_experts
        self.loss_names = tuple(loss_names)
        self.reset()

    def reset(self) -> None:
        self._tokens_per_expert: Optional[torch.Tensor] = None
        self._scalars: Optional[torch.Tensor] = None
        self._losses: Dict[str, torch.Tensor] = {}

    def _add(self, tokens_per_expert: torch.Tensor, scalars: torch.Tensor) -> None:
        if self._scalars is None:
            self._tokens_per_expert = torch.zeros(self.num_experts, dtype=torch.float64, device=scalars.device)
            self._scalars = torch.zeros(len(SCALARS), dtype=torch.float64, device=scalars.device)
        self._tokens_per_expert += tokens_per_expert
        self._scalars += scalars

    def record(
        self, routing_map: torch.Tensor, logged_losses: Dict[str, torch.Tensor], num_selected: Optional[torch.Tensor] = None
    ) -> None:
        """Add one micro-batch: ``routing_map`` ``[T, E]`` bool after capacity dropping, and the
        pairs the gate selected before it (None: nothing was dropped)."""
        with torch.no_grad():
            per_token = routing_map.sum(dim=1)
            kept = per_token.sum().double()
            scalars = torch.stack(
                [
                    torch.tensor(float(routing_map.shape[0]), dtype=torch.float64, device=routing_map.device),
                    kept,
                    (per_token == 0).sum().double(),
                    torch.ones((), dtype=torch.float64, device=routing_map.device),
                    kept if num_selected is None else num_selected.double(),
                ]
            )
            self._add(routing_map.sum(dim=0).double(), scalars)
            for name, value in logged_losses.items():
                value = value.detach().double()
                self._losses[name] = self._losses[name] + value if name in self._losses else value

    def record_dense(self, num_tokens: int, device: Optional[torch.device] = None) -> None:
        """Add one micro-batch of the EvoMoE shared-expert phase (every token, one FFN, no gate)."""
        scalars = torch.tensor([num_tokens, num_tokens, 0.0, 1.0, num_tokens], dtype=torch.float64, device=device)
        self._add(torch.zeros(self.num_experts, dtype=torch.float64, device=device), scalars)

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor, Dict[str, float]]:
        """(tokens per expert ``[E]``, scalars ``[len(SCALARS)]``, losses) as CPU float64 / floats."""
        if self._scalars is None:
            zeros = torch.zeros(self.num_experts, dtype=torch.float64)
            return zeros, torch.zeros(len(SCALARS), dtype=torch.float64), {}
        losses = {name: float(value) for name, value in self._losses.items()}
        return self._tokens_per_expert.cpu(), self._scalars.cpu(), losses
