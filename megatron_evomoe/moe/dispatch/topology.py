"""Which expert-parallel ranks share a node: the topology the hierarchical all-to-alls exploit.

Ranks are numbered node-major by the launcher (torchrun gives node ``n`` the global ranks
``n * LOCAL_WORLD_SIZE ...``), so the node of a global rank is ``rank // ranks_per_node``. The
expert-parallel (EP) group is a subset of the world (one tensor-parallel rank, one pipeline stage,
...), so a node can hold any number of its members (``hierarchical_2d`` needs the same number on
every node).

No process groups are created: the all-to-alls address peers of the EP group by their EP index
(point-to-point inside the EP group), which avoids ``dist.new_group`` and its rule that every rank
of the world create every group in the same order -- a rule that pipeline stages with different
numbers of MoE layers could not follow at layer-construction time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch.distributed as dist

from megatron_evomoe.errors import InputError


@dataclass(frozen=True)
class NodeTopology:
    """The EP group seen as nodes.

    Attributes:
        nodes: EP indices of each node's members, nodes in order; ``nodes[n][0]`` is the leader.
        rank: this rank's EP index.
    """

    nodes: tuple[tuple[int, ...], ...]
    rank: int

    @property
    def size(self) -> int:
        """Ranks in the EP group."""
        return sum(len(members) for members in self.nodes)

    @property
    def num_nodes(self) -> int:
        return len(self.nodes)

    def node_of(self, index: int) -> int:
        """Node of EP index ``index``."""
        for node, members in enumerate(self.nodes):
            if index in members:
                return node
        raise IndexError(f"EP index {index} is not in {self.nodes}")

    def local_rank(self, index: int) -> int:
        """Position of ``index`` inside its node (0 = leader)."""
        return self.nodes[self.node_of(index)].index(index)

    def leader(self, node: int) -> int:
        """EP index of the node's leader (its first member)."""
        return self.nodes[node][0]

    def is_leader(self, index: int) -> bool:
        return self.leader(self.node_of(index)) == index

    def same_node(self, a: int, b: int) -> bool:
        return self.node_of(a) == self.node_of(b)

    @property
    def uniform(self) -> bool:
        """True when every node holds the same number of EP ranks (needed by ``hierarchical_2d``)."""
        return len({len(members) for members in self.nodes}) == 1

    @property
    def ranks_per_node(self) -> int:
        """EP ranks per node (uniform topologies only)."""
        if not self.uniform:
            raise ValueError(f"nodes hold different numbers of expert-parallel ranks: {self.nodes}")
        return len(self.nodes[0])

    def with_rank(self, rank: int) -> "NodeTopology":
        """The same topology as seen from another EP index (used to model every rank's messages)."""
        return NodeTopology(self.nodes, rank)


def topology_from_ranks(group_ranks: Sequence[int], ranks_per_node: int, rank: int) -> NodeTopology:
    """Group the EP members (global ranks ``group_ranks``) into nodes, ordered by node id.

    Args:
        group_ranks: global rank of each EP index.
        ranks_per_node: global ranks per node.
        rank: this rank's EP index.
    """
    if ranks_per_node < 1:
        raise InputError(f"ranks per node must be >= 1 (got {ranks_per_node})")
    by_node: dict[int, list[int]] = {}
    for index, global_rank in enumerate(group_ranks):
        by_node.setdefault(global_rank // ranks_per_node, []).append(index)
    nodes = [by_node[node] for node in sorted(by_node)]
    return NodeTopology(tuple(tuple(members) for members in nodes), rank)


def resolve_ranks_per_node(option: Optional[int]) -> int:
    """``--moe-ranks-per-node``, else the launcher's LOCAL_WORLD_SIZE, else the whole world."""
    if option is not None:
        return option
    if "LOCAL_WORLD_SIZE" in os.environ:
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return dist.get_world_size() if dist.is_initialized() else 1


def group_topology(group, ranks_per_node: Optional[int]) -> NodeTopology:
    """The node topology of process group ``group`` (this rank's view)."""
    ranks = dist.get_process_group_ranks(group)
    return topology_from_ranks(ranks, resolve_ranks_per_node(ranks_per_node), group.rank())
