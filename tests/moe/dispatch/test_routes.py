"""Routes, their compiled layout transforms and message counts, simulated in one process.

Every rank's program is run on a local copy of its buffer and exchanges are delivered by hand, so
the hierarchical / 2D routes are checked on topologies far larger than the tests could spawn.
"""

import pytest
import torch

from megatron_evomoe.moe.dispatch.codec import pack_rows, row_specs, unpack_rows
from megatron_evomoe.moe.dispatch.cost_model import RouteTraffic
from megatron_evomoe.moe.dispatch.program import CompiledRoute, Permute
from megatron_evomoe.moe.dispatch.routes import ROUTE_BUILDERS, all_rank_routes, check_routes, route_names
from megatron_evomoe.moe.dispatch.topology import topology_from_ranks

# (EP group's global ranks, ranks per node, experts): uniform, uneven nodes, strided (expert TP = 2)
TOPOLOGIES = [
    (list(range(4)), 2, 4),
    (list(range(8)), 4, 16),
    (list(range(6)), 3, 12),
    (list(range(5)), 2, 5),
    ([0, 2, 4, 6], 4, 8),
    (list(range(3)), 3, 3),
    ([0], 1, 2),
]


def _simulate(name, topology, num_experts, counts):
    """Run every rank's compiled route; returns each rank's final buffer of row labels."""
    size = topology.size
    programs = [CompiledRoute(r).bind(counts.flatten()) for r in all_rank_routes(name, topology, num_experts)]
    # a row is labelled by (source, expert, position) so that any misplacement shows
    buffers = [
        torch.tensor(
            [s * 10_000 + e * 100 + j for e in range(num_experts) for j in range(int(counts[s, e]))],
            dtype=torch.float64,
        )
        for s in range(size)
    ]
    position = [0] * size
    while any(position[r] < len(programs[r]) for r in range(size)):
        for r in range(size):
            while position[r] < len(programs[r]) and isinstance(programs[r][position[r]], Permute):
                buffers[r] = buffers[r][programs[r][position[r]].index]
                position[r] += 1
        pending = {r: programs[r][position[r]] for r in range(size) if position[r] < len(programs[r])}
        assert len({step.tag for step in pending.values()}) <= 1, "ranks disagree on the phase"
        outbox = {}
        for r, step in pending.items():
            for (peer, rows), block in zip(step.send, buffers[r].split([n for _, n in step.send])):
                outbox[(r, peer)] = block
                assert block.numel() == rows
        for r, step in pending.items():
            received = [outbox.pop((peer, r)) for peer, _ in step.recv]
            assert [b.numel() for b in received] == [n for _, n in step.recv]
            buffers[r] = torch.cat(received) if received else buffers[r][:0]
            position[r] += 1
        assert not outbox, "a message nobody received"
    return buffers


def _expected(rank, size, num_experts, counts):
    local = num_experts // size
    return torch.tensor(
        [s * 10_000 + e * 100 + j for e in range(rank * local, (rank + 1) * local)
         for s in range(size) for j in range(int(counts[s, e]))],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("ranks,rpn,num_experts", TOPOLOGIES)
def test_routes_fit_together_and_deliver_every_row_to_its_expert(ranks, rpn, num_experts):
    topology = topology_from_ranks(ranks, rpn, 0)
    gen = torch.Generator().manual_seed(len(ranks) * 31 + num_experts)
    counts = torch.randint(0, 4, (topology.size, num_experts), generator=gen)
    counts[:, -1] = 0  # an expert nobody routes to
    if topology.size > 1:
        counts[1] = 0  # a rank that routes nothing
    for name in route_names(topology):
        check_routes(all_rank_routes(name, topology, num_experts))
        buffers = _simulate(name, topology, num_experts, counts)
        for rank in range(topology.size):
            assert torch.equal(buffers[rank], _expected(rank, topology.size, num_experts, counts)), (name, rank)


def test_topology_groups_ranks_by_node_and_leads_with_the_first():
    topology = topology_from_ranks([0, 2, 4, 6, 8, 10], 4, 3)  # an EP group strided by expert TP
    assert topology.nodes == ((0, 1), (2, 3), (4, 5))
    assert topology.leader(1) == 2 and topology.is_leader(2) and not topology.is_leader(3)
    assert topology.local_rank(3) == 1 and topology.uniform
    uneven = topology_from_ranks(list(range(5)), 2, 0)
    assert uneven.nodes == ((0, 1), (2, 3), (4,)) and not uneven.uniform
    assert route_names(uneven) == ["alltoall", "hierarchical"]
    with pytest.raises(ValueError, match="hierarchical_2d needs the same number"):
        ROUTE_BUILDERS["hierarchical_2d"](uneven, 5)


@pytest.mark.parametrize("nodes,per_node", [(2, 2), (2, 4), (4, 8), (3, 2)])
def test_message_counts_follow_the_formulas(nodes, per_node):
    """Messages of one dispatch with every chunk non-empty (routes.py docstring table)."""
    size = nodes * per_node
    topology = topology_from_ranks(list(range(size)), per_node, 0)
    ones = torch.ones(size * size, dtype=torch.long)
    summary = {name: RouteTraffic.build(name, topology, size).summary(ones, 1) for name in ROUTE_BUILDERS}
    n, r, p = nodes, per_node, size
    assert summary["alltoall"]["intra_messages"] == n * r * (r - 1)
    assert summary["alltoall"]["inter_messages"] == n * (n - 1) * r * r
    assert summary["hierarchical"]["intra_messages"] == 2 * (p - n)
    assert summary["hierarchical"]["inter_messages"] == n * (n - 1)
    assert summary["hierarchical_2d"]["intra_messages"] == n * r * (r - 1)
    assert summary["hierarchical_2d"]["inter_messages"] == n * (n - 1) * r
    # the same rows cross nodes whichever the route; hierarchical's messages are R^2 times larger
    inter_bytes = {name: s["inter_bytes"] for name, s in summary.items()}
    assert len(set(inter_bytes.values())) == 1
    # only leaders talk across nodes
    traffic = RouteTraffic.build("hierarchical", topology, size)
    leaders = {topology.leader(k) for k in range(n)}
    assert set(traffic.src[traffic.inter].tolist()) <= leaders and set(traffic.dst[traffic.inter].tolist()) <= leaders


def test_packed_rows_round_trip_any_dtype_and_empty():
    for rows in (0, 3):
        hidden = torch.randn(rows, 5).to(torch.bfloat16)
        probs = torch.rand(rows)
        packed = pack_rows([hidden, probs])
        assert packed.dtype == torch.uint8 and packed.shape == (rows, 5 * 2 + 4)
        got_hidden, got_probs = unpack_rows(packed, row_specs([hidden, probs]))
        assert torch.equal(got_hidden, hidden) and torch.equal(got_probs, probs)
