"""The dispatcher interface and the local (no communication) permutation shared by all dispatchers.

``dispatch(hidden [T, h], probs [T, E], routing_map [T, E]) -> (expert_input [M, h],
tokens_per_local_expert [L] (int64, CPU), expert_probs [M])`` where rows of ``expert_input`` are
grouped by local expert (L experts on this rank) and ``M`` is the number of (token, expert) pairs
this rank computes. ``combine(expert_output [M, h]) -> [T, h]`` returns, for every local token, the
sum of its experts' (already prob-weighted) outputs. A dispatcher keeps the bookkeeping of the last
``dispatch`` for the following ``combine``; each MoE layer owns its own dispatcher.

All implementations must give identical results (tested), run on gloo and NCCL, and support tokens
that visit 0..E experts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, List, Optional

import torch

if TYPE_CHECKING:  # annotations only: the dispatchers import without megatron-core (see options.py)
    from megatron.core.process_groups_config import ProcessGroupCollection

    from megatron_evomoe.config import ModelConfig


def pairs_by_expert(routing_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token, expert) pairs of a ``[T, E]`` bool map, grouped by expert, tokens ascending.

    Returns:
        ``token_index [M]``, ``expert_index [M]`` and ``tokens_per_expert [E]`` (int64).
    """
    expert_index, token_index = routing_map.t().nonzero(as_tuple=True)
    tokens_per_expert = routing_map.sum(dim=0, dtype=torch.int64)
    return token_index, expert_index, tokens_per_expert


class _ScatterAddRows(torch.autograd.Function):
    """``index_add`` into zeros whose backward keeps only the index (torch's keeps ``rows`` too)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
        ctx.save_for_backward(index)
        return rows.new_zeros((num_rows, rows.shape[-1])).index_add_(0, index, rows)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (index,) = ctx.saved_tensors
        return grad.index_select(0, index), None, None


def scatter_add_rows(rows: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``out[index[m]] += rows[m]`` into ``num_rows`` zero rows (autograd-friendly un-permute)."""
    return _ScatterAddRows.apply(rows, index, num_rows)


class TokenDispatcher(ABC):
    """Moves tokens to the ranks that own their experts, and the results back."""

    def __init__(
        self,
        num_local_experts: int,
        local_expert_indices: List[int],
        config: ModelConfig,
        pg_collection: ProcessGroupCollection,
    ):
        self.config = config
        self.num_local_experts = num_local_experts
        self.local_expert_indices = list(local_expert_indices)
        self.num_experts = config.num_moe_experts
        self.ep_group = pg_collection.ep
        self.expt_tp_group = pg_collection.expt_tp
        self.tp_ep_group = pg_collection.tp_ep

    @abstractmethod
    def dispatch(
        self, hidden: torch.Tensor, probs: torch.Tensor, routing_map: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Send tokens to their experts; see the module docstring for shapes."""

    @abstractmethod
    def combine(self, expert_output: torch.Tensor) -> torch.Tensor:
        """Bring expert outputs back to the tokens' ranks and sum per token."""

    def local_gather(self) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """``(source [T, h], index [M])`` when the last ``dispatch`` built ``expert_input`` as
        ``source.index_select(0, index)`` without communication, else None. The layer then lets
        backward gather the rows again instead of keeping them (``moe/regather.py``)."""
        return None

    @property
    def first_local_expert(self) -> int:
        return self.local_expert_indices[0]


def local_slice(tensor: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """Columns ``[first, first+count)`` of a ``[T, E]`` tensor (this rank's experts)."""
    return tensor[:, first : first + count]


def build_dispatcher(
    config: ModelConfig,
    num_local_experts: int,
    local_expert_indices: List[int],
    pg_collection: ProcessGroupCollection,
    dispatcher_type: Optional[str] = None,
) -> TokenDispatcher:
    """The dispatcher named by ``config.moe_dispatch.dispatcher_type`` (or ``dispatcher_type``)."""
    from megatron_evomoe.moe.dispatch import dispatcher_class

    name = dispatcher_type or config.moe_dispatch.dispatcher_type
    return dispatcher_class(name)(num_local_experts, local_expert_indices, config, pg_collection)
