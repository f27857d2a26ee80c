"""The α-β cost model against hand-computed times, and the choices ``auto`` makes from it."""

import pytest
import torch

from megatron_evomoe.moe.dispatch.cost_model import (
    CostModel,
    LinkCost,
    RouteTraffic,
    cheapest_route,
    predict_dispatch_combine,
)
from megatron_evomoe.moe.dispatch.options import DispatchOptions
from megatron_evomoe.moe.dispatch.routes import route_names
from megatron_evomoe.moe.dispatch.topology import topology_from_ranks


def _traffic(nodes, per_node, num_experts):
    topology = topology_from_ranks(list(range(nodes * per_node)), per_node, 0)
    return topology, {name: RouteTraffic.build(name, topology, num_experts) for name in route_names(topology)}


def test_two_single_rank_nodes_by_hand():
    _, traffic = _traffic(2, 1, 2)
    model = CostModel(LinkCost(0.0, 0.0), LinkCost(1e-5, 1e-9))
    counts = torch.tensor([[7, 3], [5, 9]])  # rank 0 sends 3 rows to rank 1, rank 1 sends 5 back
    # one phase; a node's card sends and receives at once: the larger side, 5 rows, counts
    expected = (1e-5 + 5 * 100 * 1e-9) + (1e-5 + 5 * 50 * 1e-9)
    got = predict_dispatch_combine(traffic["alltoall"], counts, 100, 50, model)
    assert got == pytest.approx(expected)


def test_two_by_two_by_hand_and_the_cheapest_route():
    """Every chunk one row of one byte; α/β = 1/0.1 inside a node, 10/1 across."""
    _, traffic = _traffic(2, 2, 4)
    model = CostModel(LinkCost(1.0, 0.1), LinkCost(10.0, 1.0))
    counts = torch.ones(4, 4, dtype=torch.long)
    one_pass = {name: t.time(counts.flatten(), 1, model) for name, t in traffic.items()}
    # flat: a node's two ranks send 2 inter-node messages of 1 row each through one card
    assert one_pass["alltoall"] == pytest.approx(4 * (10 + 1))
    # gather 4 rows to the leader, 4 rows leader to leader, scatter 4 rows
    assert one_pass["hierarchical"] == pytest.approx(2 * (1 + 0.4) + (10 + 4))
    # 2 rows to the node peer, then each rank 2 rows to its peer on the other node (card shared)
    assert one_pass["hierarchical_2d"] == pytest.approx((1 + 0.2) + 2 * (10 + 2))
    best, costs = cheapest_route(traffic, counts, 1, 1, model)
    assert best == "hierarchical" and costs["hierarchical"] == pytest.approx(2 * one_pass["hierarchical"])


def test_cluster_defaults_gather_small_messages_but_not_large_ones():
    """Latency-bound: the leaders' few messages win. Bandwidth-bound: funnelling a node's rows
    through its leader's link costs more than the messages it saves."""
    _, traffic = _traffic(4, 8, 32)
    model = CostModel.from_options(DispatchOptions())
    row = 4096 * 2  # bf16 hidden 4096
    small = torch.ones(32, 32, dtype=torch.long)
    large = torch.full((32, 32), 512, dtype=torch.long)
    assert cheapest_route(traffic, small, row + 4, row, model)[0] == "hierarchical"
    assert cheapest_route(traffic, large, row + 4, row, model)[0] in ("alltoall", "hierarchical_2d")
    # with links as slow inside a node as across, the flat all-to-all's direct messages win
    pcie = CostModel(LinkCost(2e-5, 1 / 12.5e9), LinkCost(2e-5, 1 / 12.5e9))
    assert cheapest_route(traffic, large, row + 4, row, pcie)[0] == "alltoall"


def test_count_exchange_traffic_is_leader_only_across_nodes():
    topology = topology_from_ranks(list(range(8)), 4, 0)
    counts = RouteTraffic.for_counts("hierarchical", topology)
    leaders = {topology.leader(n) for n in range(topology.num_nodes)}
    assert set(counts.src[counts.inter].tolist()) <= leaders
    flat = RouteTraffic.for_counts("alltoall", topology)
    ones = torch.ones(8, dtype=torch.long)
    assert flat.summary(ones, 8)["inter_messages"] == 8 * 4
    assert counts.summary(ones, 8)["inter_messages"] == 2
