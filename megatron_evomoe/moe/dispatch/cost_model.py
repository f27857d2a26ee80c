"""The α-β cost model that ``auto`` uses to pick a route, and the benchmark prints beside measurements.

A message of ``n`` bytes over a link of level ``l`` (intra- or inter-node) costs ``α_l + β_l n``
seconds. The messages of a route follow from its phases and the count matrix ``C`` (bytes = rows x
packed row size). The time of one dispatch (or combine) is

    T = Σ_phases  max( max_rank   Σ_{intra msgs of the rank} (α_intra + β_intra n),
                       max_node   Σ_{inter msgs of the node} (α_inter + β_inter n) )

where each sum is taken over the messages sent and, separately, over those received, and the larger
is used. Why this shape:

* phases are sequential (a leader cannot forward rows it has not received), hence the sum;
* each rank has its own intra-node link (NVLink / PCIe lanes), hence the per-rank sum;
* a node has one network card shared by its ranks (the paper's setting), so all inter-node
  messages of a node serialise on it -- the per-node sum. This is what makes the flat all-to-all
  expensive across nodes: its ``N (N-1) R^2`` small messages each pay ``α_inter``, while the
  hierarchical route sends ``N (N-1)`` large ones (the same bytes);
* intra- and inter-node traffic of a phase proceed concurrently, hence the max.

Combine moves the same messages in the opposite direction (rows of the expert output instead of
hidden rows + gate weight), so ``dispatch + combine`` = ``T(dispatch row bytes) + T(combine row
bytes)``; the count exchange that precedes a dispatch (``P`` rows of ``E`` int64, latency-bound, one
to three phases) is added with the same formula when its traffic is given. ``auto`` leaves it out of
its choice: it exchanges counts the same way whichever route runs. Not modelled: the local layout
transforms (memory copies, cheap next to the network), software overhead per phase, and contention
inside a switch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from megatron_evomoe.moe.dispatch.counts import count_routes
from megatron_evomoe.moe.dispatch.options import DispatchOptions
from megatron_evomoe.moe.dispatch.routes import Route, all_rank_routes
from megatron_evomoe.moe.dispatch.topology import NodeTopology


@dataclass(frozen=True)
class LinkCost:
    """``alpha`` seconds per message plus ``beta`` seconds per byte."""

    alpha: float
    beta: float


@dataclass(frozen=True)
class CostModel:
    """α-β parameters of the two link levels."""

    intra: LinkCost
    inter: LinkCost

    @classmethod
    def from_options(cls, options: DispatchOptions) -> "CostModel":
        return cls(LinkCost(options.alpha_intra, options.beta_intra), LinkCost(options.alpha_inter, options.beta_inter))


class RouteTraffic:
    """Every message of a route (all ranks, all phases) as index tensors, for any count matrix.

    Args:
        routes: the route of every EP rank (``routes[r].rank == r``).
        topology: the EP group's nodes.
    """

    def __init__(self, routes: Sequence[Route], topology: NodeTopology):
        self.name = routes[0].name
        self.num_phases = len(routes[0].phases)
        self.num_nodes = topology.num_nodes
        self.size = topology.size
        node_of = [topology.node_of(r) for r in range(topology.size)]
        phase, src, dst, entry_msg, entry_chunk = [], [], [], [], []
        for route in routes:
            for k, step in enumerate(route.phases):
                for peer, chunks in step.send:
                    if peer == route.rank or not chunks:
                        continue
                    entry_msg.extend([len(phase)] * len(chunks))
                    entry_chunk.extend(chunks)
                    phase.append(k)
                    src.append(route.rank)
                    dst.append(peer)
        self.phase = torch.tensor(phase, dtype=torch.long)
        self.src = torch.tensor(src, dtype=torch.long)
        self.dst = torch.tensor(dst, dtype=torch.long)
        nodes = torch.tensor(node_of, dtype=torch.long)
        self.src_node, self.dst_node = nodes[self.src], nodes[self.dst]
        self.inter = self.src_node != self.dst_node
        self.entry_msg = torch.tensor(entry_msg, dtype=torch.long)
        self.entry_chunk = torch.tensor(entry_chunk, dtype=torch.long)

    @classmethod
    def build(cls, name: str, topology: NodeTopology, num_experts: int) -> "RouteTraffic":
        """Traffic of the data route ``name``."""
        return cls(all_rank_routes(name, topology, num_experts), topology)

    @classmethod
    def for_counts(cls, name: str, topology: NodeTopology) -> "RouteTraffic":
        """Traffic of the count exchange of dispatcher ``name`` (chunk = one rank's count row)."""
        return cls(count_routes(name, topology), topology)

    def message_bytes(self, sizes: torch.Tensor, row_bytes: int) -> torch.Tensor:
        """Bytes of every message (float64; 0 = the message is not sent) for chunk sizes ``sizes``."""
        rows = torch.zeros(self.phase.numel(), dtype=torch.float64)
        rows.index_add_(0, self.entry_msg, sizes[self.entry_chunk].to(torch.float64))
        return rows * row_bytes

    def summary(self, sizes: torch.Tensor, row_bytes: int) -> dict:
        """Messages and bytes of one dispatch: totals and the busiest rank, per level."""
        nbytes = self.message_bytes(sizes, row_bytes)
        sent = nbytes > 0
        out = {}
        for level, mask in (("intra", ~self.inter), ("inter", self.inter)):
            m = sent & mask
            per_rank = torch.zeros(self.size, dtype=torch.long).index_add_(0, self.src[m], torch.ones_like(self.src[m]))
            out[f"{level}_messages"] = int(m.sum())
            out[f"{level}_messages_max_rank"] = int(per_rank.max()) if self.size else 0
            out[f"{level}_bytes"] = float(nbytes[m].sum())
        return out

    def time(self, sizes: torch.Tensor, row_bytes: int, model: CostModel) -> float:
        """Predicted seconds of one pass (dispatch or combine) with ``row_bytes`` per row."""
        nbytes = self.message_bytes(sizes, row_bytes)
        sent = (nbytes > 0).to(torch.float64)
        intra = (model.intra.alpha + model.intra.beta * nbytes) * sent * (~self.inter)
        inter = (model.inter.alpha + model.inter.beta * nbytes) * sent * self.inter
        phases = self.num_phases
        intra_time = torch.maximum(
            _per_phase_max(intra, self.phase, self.src, phases, self.size),
            _per_phase_max(intra, self.phase, self.dst, phases, self.size),
        )
        inter_time = torch.maximum(
            _per_phase_max(inter, self.phase, self.src_node, phases, self.num_nodes),
            _per_phase_max(inter, self.phase, self.dst_node, phases, self.num_nodes),
        )
        return float(torch.maximum(intra_time, inter_time).sum())


def _per_phase_max(cost: torch.Tensor, phase: torch.Tensor, who: torch.Tensor, phases: int, count: int) -> torch.Tensor:
    """``max_who Σ cost`` for each phase."""
    table = torch.zeros(phases * max(count, 1), dtype=torch.float64)
    table.index_add_(0, phase * count + who, cost)
    return table.view(phases, -1).max(dim=1).values if phases else table


def predict_dispatch_combine(
    traffic: RouteTraffic,
    counts: torch.Tensor,
    row_bytes: int,
    out_row_bytes: int,
    model: CostModel,
    count_traffic: RouteTraffic | None = None,
) -> float:
    """Seconds of dispatch (``row_bytes`` per row) plus combine (``out_row_bytes``) for ``counts [P, E]``.

    With ``count_traffic`` the count exchange before the dispatch is included.
    """
    sizes = counts.flatten()
    seconds = traffic.time(sizes, row_bytes, model) + traffic.time(sizes, out_row_bytes, model)
    if count_traffic is not None:
        num_sources, num_experts = counts.shape
        ones = torch.ones(num_sources, dtype=torch.long)
        seconds += count_traffic.time(ones, num_experts * counts.element_size(), model)
    return seconds


def cheapest_route(
    traffics: dict, counts: torch.Tensor, row_bytes: int, out_row_bytes: int, model: CostModel
) -> tuple[str, dict]:
    """The route with the smallest predicted dispatch+combine time (ties: the first listed).

    Deterministic in its inputs, so every rank holding the same ``counts`` picks the same route.
    """
    costs = {name: predict_dispatch_combine(t, counts, row_bytes, out_row_bytes, model) for name, t in traffics.items()}
    best = min(costs, key=lambda name: (costs[name], list(costs).index(name)))
    return best, costs
