"""Exchanging the count matrix ``C [P, E]`` before the rows move.

Every rank of the EP group needs all of ``C`` (``C[s, e]`` = rows rank ``s`` routes to expert
``e``): the row counts of every phase, and the layout transforms, follow from it, and ``auto`` must
reach the same decision on every rank. Each dispatcher moves its counts along its own topology, so
that, e.g., the hierarchical one never lets a non-leader talk across nodes:

* :func:`allgather_counts` -- every rank sends its row to every other (flat);
* :func:`hierarchical_counts` -- rows to the node leader, node blocks between leaders, ``C`` back
  from the leader;
* :func:`two_level_counts` -- rows within the node, node blocks between same-local-rank peers.
"""

from __future__ import annotations

import torch

from megatron_evomoe.moe.dispatch.routes import Phase, Route
from megatron_evomoe.moe.dispatch.topology import NodeTopology
from megatron_evomoe.moe.dispatch.transport import Transport

_TAG = 1000  # keeps count messages apart from row messages between the same pair


def allgather_counts(transport: Transport, row: torch.Tensor) -> torch.Tensor:
    """All-gather of ``row`` ``[E]`` over the group: ``C [P, E]`` (CPU int64)."""
    peers = range(transport.size)
    rows = transport.exchange(
        [(p, row) for p in peers], [(p, tuple(row.shape)) for p in peers], row, "counts", _TAG
    )
    return torch.stack(rows).cpu()


def hierarchical_counts(transport: Transport, row: torch.Tensor) -> torch.Tensor:
    """``C [P, E]`` via the node leaders (only leaders send across nodes)."""
    topo, me = transport.topology, transport.rank
    node = topo.node_of(me)
    members, leader = topo.nodes[node], topo.leader(node)
    width = row.shape[0]
    full = row.new_empty((topo.size, width))
    if me == leader:
        block = torch.stack(
            transport.exchange([(me, row)], [(m, (width,)) for m in members], row, "counts", _TAG)
        )
        blocks = transport.exchange(
            [(topo.leader(d), block) for d in range(topo.num_nodes)],
            [(topo.leader(a), (len(topo.nodes[a]), width)) for a in range(topo.num_nodes)],
            row,
            "counts",
            _TAG + 1,
        )
        for a, node_block in enumerate(blocks):
            full[list(topo.nodes[a])] = node_block
        transport.exchange([(m, full) for m in members], [(me, tuple(full.shape))], row, "counts", _TAG + 2)
    else:
        transport.exchange([(leader, row)], [], row, "counts", _TAG)
        (full,) = transport.exchange([], [(leader, tuple(full.shape))], row, "counts", _TAG + 2)
    return full.cpu()


def two_level_counts(transport: Transport, row: torch.Tensor) -> torch.Tensor:
    """``C [P, E]``: all-gather within the node, then between same-local-rank peers."""
    topo, me = transport.topology, transport.rank
    node = topo.node_of(me)
    members, local = topo.nodes[node], topo.local_rank(me)
    width = row.shape[0]
    block = torch.stack(
        transport.exchange(
            [(m, row) for m in members], [(m, (width,)) for m in members], row, "counts", _TAG
        )
    )
    peers = [topo.nodes[d][local] for d in range(topo.num_nodes)]
    blocks = transport.exchange(
        [(q, block) for q in peers],
        [(q, (len(topo.nodes[d]), width)) for d, q in enumerate(peers)],
        row,
        "counts",
        _TAG + 1,
    )
    full = row.new_empty((topo.size, width))
    for d, node_block in enumerate(blocks):
        full[list(topo.nodes[d])] = node_block
    return full.cpu()


COUNT_EXCHANGES = {
    "alltoall": allgather_counts,
    "hierarchical": hierarchical_counts,
    "hierarchical_2d": two_level_counts,
}


def count_routes(name: str, topology: NodeTopology) -> list[Route]:
    """The messages of a count exchange, as routes (for the cost model; every rank's view).

    A "chunk" here is one rank's count row (id = its EP index, size 1 row of ``E`` int64), so the
    messages of phase ``k`` are those of the exchange functions above. Unlike data routes, rows are
    copied to several peers (an all-gather), so these routes are not permutations.
    """
    routes = []
    for me in range(topology.size):
        node = topology.node_of(me)
        members, leader = topology.nodes[node], topology.leader(node)
        if name == "hierarchical":
            gather = Phase(send=((leader, (me,)),), recv=())
            if me == leader:
                inter = Phase(
                    send=tuple((topology.leader(d), members) for d in range(topology.num_nodes)), recv=()
                )
                scatter = Phase(send=tuple((m, tuple(range(topology.size))) for m in members), recv=())
            else:
                inter, scatter = Phase((), ()), Phase((), ())
            phases = (gather, inter, scatter)
        elif name == "hierarchical_2d":
            local = topology.local_rank(me)
            peers = [topology.nodes[d][local] for d in range(topology.num_nodes)]
            phases = (
                Phase(send=tuple((m, (me,)) for m in members), recv=()),
                Phase(send=tuple((q, members) for q in peers), recv=()),
            )
        else:
            phases = (Phase(send=tuple((q, (me,)) for q in range(topology.size)), recv=()),)
        routes.append(Route(f"{name}_counts", me, (me,), phases, ()))
    return routes
