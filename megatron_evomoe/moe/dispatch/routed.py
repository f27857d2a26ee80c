"""The all-to-all dispatchers: flat, hierarchical (the paper's) and 2D-hierarchical.

One engine runs them all (:class:`RoutedDispatcher`); they differ only in their route
(``routes.py``) and in how the count matrix travels (``counts.py``). ``dispatch``:

1. local permutation: the (token, expert) pairs of this rank sorted by expert, hidden rows and gate
   weights gathered: ``rows [M, h]``, ``row_probs [M]``;
2. counts: ``C [P, E]`` on every EP rank;
3. the route's phases over the EP group, with the layout transforms between them; hidden rows and
   gate weights travel packed in one message per peer;
4. expert tensor parallelism (as megatron-core's all-to-all dispatcher): the expert-TP ranks of an
   expert group all-gather their rows (uneven sizes) and reorder them to ``(expert, source)``,
   source = ``ep_rank * ETP + etp_rank`` -- the allgather reference's order.

``combine`` runs the same steps backwards (reduce-scatter over expert TP, reverse phases, inverse
permutations) and sums each token's expert outputs with ``index_add``. Every step is
differentiable; no step saves activations (only indices and counts), which is what lets MoE-aware
recomputation keep the all-to-all outputs and never re-run them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from megatron_evomoe.moe.dispatch.base import TokenDispatcher, pairs_by_expert, scatter_add_rows
from megatron_evomoe.moe.dispatch.counts import COUNT_EXCHANGES
from megatron_evomoe.moe.dispatch.functions import exchange_rows, gather_rows, reduce_scatter_rows
from megatron_evomoe.moe.dispatch.program import ChunkPermutation, CompiledRoute, Permute, Step, permute_for
from megatron_evomoe.moe.dispatch.replay import ExchangeReplay
from megatron_evomoe.moe.dispatch.routes import ROUTE_BUILDERS
from megatron_evomoe.moe.dispatch.topology import group_topology
from megatron_evomoe.moe.dispatch.transport import CommLog, Transport
from megatron_evomoe.moe.recompute import REPLAY_EXCHANGES, moe_recompute_scope


@dataclass
class _Dispatched:
    """What ``combine`` needs from the last ``dispatch`` (indices and counts only)."""

    token_index: torch.Tensor
    num_tokens: int
    steps: List[Step]
    tp_rows: Optional[tuple[int, ...]] = None
    tp_order: Optional[Permute] = None


class RoutedDispatcher(TokenDispatcher):
    """Base of the all-to-all dispatchers; subclasses name their route."""

    ROUTE = ""

    def __init__(self, num_local_experts, local_expert_indices, config, pg_collection):
        super().__init__(num_local_experts, local_expert_indices, config, pg_collection)
        options = config.moe_dispatch
        self.topology = group_topology(self.ep_group, options.ranks_per_node)
        self.comm_log = CommLog()
        replays = moe_recompute_scope(config) == REPLAY_EXCHANGES
        self.replay = ExchangeReplay() if replays else None
        self.ep = Transport(self.ep_group, self.topology, self.comm_log, self.replay)
        self.tp: Optional[Transport] = None
        if self.expt_tp_group.size() > 1:
            tp_topology = group_topology(self.expt_tp_group, options.ranks_per_node)
            self.tp = Transport(self.expt_tp_group, tp_topology, self.comm_log, self.replay)
            self._tp_order = _expert_tp_order(self.expt_tp_group.size(), self.topology.size, num_local_experts)
        self.routes = {
            name: CompiledRoute(ROUTE_BUILDERS[name](self.topology, self.num_experts))
            for name in self.route_names()
        }
        _initialise_communicator(self.ep_group)
        self._last: Optional[_Dispatched] = None

    # ---------------------------------------------------------------- what subclasses choose
    def route_names(self) -> list[str]:
        """Routes this dispatcher may run."""
        return [self.ROUTE]

    @property
    def count_exchange(self) -> str:
        """Which count exchange (``counts.py``) runs before each dispatch."""
        return self.ROUTE

    def exchange_counts(self, row: torch.Tensor) -> torch.Tensor:
        """``C [P, E]`` (CPU int64) from this rank's ``row [E]``."""
        return COUNT_EXCHANGES[self.count_exchange](self.ep, row)

    def select_route(self, counts: torch.Tensor, row_bytes: int, out_row_bytes: int) -> str:
        """The route to run for count matrix ``counts``."""
        return self.ROUTE

    # --------------------------------------------------------------------------- interface
    def dispatch(self, hidden, probs, routing_map):
        if self.replay is not None:
            self.replay.start()
        token_index, expert_index, row = pairs_by_expert(routing_map)
        rows = hidden.index_select(0, token_index)  # [M, h], sorted by expert
        row_probs = probs[token_index, expert_index]  # [M]
        counts = self.exchange_counts(row)  # [P, E]
        row_bytes = rows.shape[1] * rows.element_size() + row_probs.element_size()
        name = self.select_route(counts, row_bytes, rows.shape[1] * rows.element_size())
        self.comm_log.routes[name] += 1
        steps = self.routes[name].bind(counts.flatten(), rows.device)
        tensors = [rows, row_probs]
        for step in steps:
            if isinstance(step, Permute):
                tensors = [t.index_select(0, step.index) for t in tensors]
            else:
                tensors = exchange_rows(self.ep, step, "dispatch", tensors)
        local = slice(self.first_local_expert, self.first_local_expert + self.num_local_experts)
        self._last = _Dispatched(token_index, hidden.shape[0], steps)
        if self.tp is None:
            tokens_per_expert = counts[:, local].sum(0)
        else:
            tensors, tokens_per_expert = self._gather_expert_tp(tensors, counts[:, local])
        expert_input, expert_probs = tensors
        return expert_input, tokens_per_expert, expert_probs

    def combine(self, expert_output):
        last = self._last
        output = expert_output
        if last.tp_rows is not None:
            output = output.index_select(0, last.tp_order.inverse)
            (output,) = reduce_scatter_rows(self.tp, last.tp_rows, [output])
        for step in reversed(last.steps):
            if isinstance(step, Permute):
                output = output.index_select(0, step.inverse)
            else:
                (output,) = exchange_rows(self.ep, step.reversed(), "combine", [output])
        return scatter_add_rows(output, last.token_index, last.num_tokens)

    # ------------------------------------------------------------------ expert tensor parallel
    def _gather_expert_tp(self, tensors, local_counts: torch.Tensor):
        """All-gather rows over expert-TP and order them ``(expert, ep source, etp source)``.

        Args:
            local_counts: ``[P, L]`` rows this rank received per (EP source, local expert).
        """
        device = tensors[0].device
        local_counts = local_counts.to(device)
        gathered_counts = self.tp.exchange(
            [(t, local_counts) for t in range(self.tp.size)],
            [(t, tuple(local_counts.shape)) for t in range(self.tp.size)],
            local_counts,
            "counts",
        )
        per_tp = torch.stack(gathered_counts).cpu()  # [ETP, P, L]
        rows_per_rank = tuple(per_tp.flatten(1).sum(1).tolist())
        tensors = gather_rows(self.tp, rows_per_rank, tensors)  # (etp, expert, ep) order
        order = permute_for(self._tp_order.rows(per_tp.flatten()), device)
        self._last.tp_rows, self._last.tp_order = rows_per_rank, order
        return [t.index_select(0, order.index) for t in tensors], per_tp.sum((0, 1))


def _expert_tp_order(tp_size: int, ep_size: int, num_local: int) -> ChunkPermutation:
    """Chunks ``(t, s, e)`` (id ``(t * P + s) * L + e``) from (t, e, s) to (e, s, t) order."""

    def cid(t: int, s: int, e: int) -> int:
        return (t * ep_size + s) * num_local + e

    before = [cid(t, s, e) for t in range(tp_size) for e in range(num_local) for s in range(ep_size)]
    after = [cid(t, s, e) for e in range(num_local) for s in range(ep_size) for t in range(tp_size)]
    return ChunkPermutation(before, after)


def _initialise_communicator(group) -> None:
    """NCCL needs every rank of a group in its first call; point-to-point phases are not."""
    if group.size() > 1 and dist.get_backend(group) == "nccl":
        flag = torch.zeros(1, device=torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(flag, group=group)


class AllToAllDispatcher(RoutedDispatcher):
    """Flat all-to-all over the EP group (uneven splits, counts all-gathered first)."""

    ROUTE = "alltoall"


class HierarchicalDispatcher(RoutedDispatcher):
    """The paper's topology-aware hierarchical all-to-all (leaders only cross nodes)."""

    ROUTE = "hierarchical"


class Hierarchical2DDispatcher(RoutedDispatcher):
    """Intra-node all-to-all, then inter-node all-to-all among same-local-rank peers."""

    ROUTE = "hierarchical_2d"
