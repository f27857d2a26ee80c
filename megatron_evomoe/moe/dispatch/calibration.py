"""Measure the α-β parameters of the two link levels with a short ping-pong (``--moe-a2a-calibrate``).

EP rank 0 (the leader of node 0) times round trips of a small and a large message with a member of
its own node (intra) and with the leader of node 1 (inter): one-way time ``t(n) = rtt(n) / 2``
(the median of ``REPEATS`` round trips: the typical time, other work on the machine included),
``α = t(small)``, ``β = (t(large) - t(small)) / (large - small)``. A level that the topology lacks
(one node, or one rank per node) keeps the flag value. The result is broadcast from EP rank 0, so
every rank's ``auto`` dispatcher decides with the same numbers (it must: the ranks of a route have
to agree on it).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from megatron_evomoe.moe.dispatch.cost_model import CostModel, LinkCost
from megatron_evomoe.moe.dispatch.topology import NodeTopology

SMALL_BYTES, LARGE_BYTES, REPEATS = 8, 4 << 20, 10


def _one_way_seconds(group, me: int, peer: int, num_bytes: int, device) -> float:
    """Median one-way time of ``REPEATS`` round trips between EP ranks ``me`` and ``peer``."""
    buffer = torch.zeros(num_bytes, dtype=torch.uint8, device=device)
    times = []
    for _ in range(REPEATS + 1):
        start = time.perf_counter()
        if me < peer:
            dist.send(buffer, group=group, group_dst=peer)
            dist.recv(buffer, group=group, group_src=peer)
        else:
            dist.recv(buffer, group=group, group_src=peer)
            dist.send(buffer, group=group, group_dst=peer)
        times.append((time.perf_counter() - start) / 2)
    return statistics.median(times[1:])  # the first round trip warms the connection up


def _fit(group, me: int, peer: int, device) -> tuple[float, float]:
    small = _one_way_seconds(group, me, peer, SMALL_BYTES, device)
    large = _one_way_seconds(group, me, peer, LARGE_BYTES, device)
    return small, max(large - small, 0.0) / (LARGE_BYTES - SMALL_BYTES)


def calibrate(group, topology: NodeTopology, default: CostModel, device=None) -> CostModel:
    """Ping-pong on the links of ``topology`` (all ranks of ``group`` must call this)."""
    device = device or torch.device("cpu")
    me = topology.rank
    intra_peer = topology.nodes[0][1] if len(topology.nodes[0]) > 1 else None
    inter_peer = topology.leader(1) if topology.num_nodes > 1 else None
    params = torch.tensor(
        [default.intra.alpha, default.intra.beta, default.inter.alpha, default.inter.beta],
        dtype=torch.float64,
    )
    if intra_peer is not None and me in (0, intra_peer):
        result = _fit(group, me, intra_peer if me == 0 else 0, device)
        params[0:2] = torch.tensor(result, dtype=torch.float64)
    if inter_peer is not None and me in (0, inter_peer):
        result = _fit(group, me, inter_peer if me == 0 else 0, device)
        params[2:4] = torch.tensor(result, dtype=torch.float64)
    params = params.to(device)
    dist.broadcast(params, group=group, group_src=0)
    a_intra, b_intra, a_inter, b_inter = params.cpu().tolist()
    return CostModel(LinkCost(a_intra, b_intra), LinkCost(a_inter, b_inter))
