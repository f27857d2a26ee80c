"""Routes of the all-to-all dispatchers: who sends which rows to whom, phase by phase.

Rows travel in *chunks*: chunk ``(s, e)`` holds the (token, expert ``e``) rows that EP rank ``s``
routes to expert ``e``; its id is ``s * E + e`` and its size ``C[s, e]`` (the count matrix) changes
every step while the route does not. A route, seen from one rank, is:

* ``source``: the chunks of this rank's send buffer, ``(me, 0) ... (me, E-1)`` (rows sorted by
  expert, as :func:`pairs_by_expert` gives them);
* ``phases``: exchanges; each lists, per peer, the chunks sent (in buffer order) and the chunks
  received (in arrival order). The buffer before a phase must be the concatenation of its send
  blocks and becomes the concatenation of its receive blocks -- the *layout transforms* between
  phases are the permutations that follow (``program.py`` derives them);
* ``target``: the expert-side buffer, grouped by local expert then source rank ``(e, s)``, the
  order in which the allgather reference feeds the experts.

Combine runs the same route backwards. These are pure functions of the topology; tests check that
every rank's sends match its peers' receives (:func:`check_routes`).

Messages sent per dispatch, when every chunk is non-empty (``P`` EP ranks on ``N`` nodes of ``R_n``
ranks, ``R`` when uniform); combine sends the same number back:

============== ====================================== =========================================
route          intra-node messages                    inter-node messages
============== ====================================== =========================================
alltoall       sum_n R_n (R_n - 1)                    P^2 - sum_n R_n^2   (= N (N-1) R^2)
hierarchical   2 (P - N)   (gather + scatter)         N (N - 1)           (leaders only)
hierarchical_2d N R (R - 1)                           N (N - 1) R         (same local rank)
============== ====================================== =========================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from megatron_evomoe.moe.dispatch.topology import NodeTopology

Block = tuple[int, tuple[int, ...]]
"""(peer EP index, chunk ids)."""


@dataclass(frozen=True)
class Phase:
    """One exchange as seen by one rank.

    Attributes:
        send: blocks sent, in the order they sit in the buffer.
        recv: blocks received, in the order they are concatenated.
        collective: run as one ``all_to_all_single`` over the whole group (then ``send``/``recv``
            list every peer in rank order); otherwise point-to-point messages.
    """

    send: tuple[Block, ...]
    recv: tuple[Block, ...]
    collective: bool = False


@dataclass(frozen=True)
class Route:
    """A dispatcher's route for one rank (see the module docstring)."""

    name: str
    rank: int
    source: tuple[int, ...]
    phases: tuple[Phase, ...]
    target: tuple[int, ...]


@dataclass(frozen=True)
class _Chunks:
    """Chunk ids and expert ownership for ``num_experts`` experts on ``size`` EP ranks."""

    num_experts: int
    size: int

    @property
    def per_rank(self) -> int:
        return self.num_experts // self.size

    def id(self, source: int, expert: int) -> int:
        return source * self.num_experts + expert

    def experts(self, rank: int) -> range:
        return range(rank * self.per_rank, (rank + 1) * self.per_rank)

    def owner(self, expert: int) -> int:
        return expert // self.per_rank

    def source(self, rank: int) -> tuple[int, ...]:
        return tuple(self.id(rank, e) for e in range(self.num_experts))

    def target(self, rank: int) -> tuple[int, ...]:
        return tuple(self.id(s, e) for e in self.experts(rank) for s in range(self.size))


def _chunks(topology: NodeTopology, num_experts: int) -> _Chunks:
    if num_experts % topology.size != 0:
        raise ValueError(f"{num_experts} experts do not divide over {topology.size} expert-parallel ranks")
    return _Chunks(num_experts, topology.size)


def flat_route(topology: NodeTopology, num_experts: int) -> Route:
    """One all-to-all over the EP group: rank ``s`` sends chunk ``(s, e)`` to ``owner(e)``."""
    c, me = _chunks(topology, num_experts), topology.rank
    send = tuple((q, tuple(c.id(me, e) for e in c.experts(q))) for q in range(c.size))
    recv = tuple((p, tuple(c.id(p, e) for e in c.experts(me))) for p in range(c.size))
    return Route("alltoall", me, c.source(me), (Phase(send, recv, collective=True),), c.target(me))


def hierarchical_route(topology: NodeTopology, num_experts: int) -> Route:
    """The paper's topology-aware all-to-all (EvoMoE sec. IV).

    1. gather: every rank sends its whole buffer to its node's leader;
    2. the leader reorders so that rows for the same destination node are contiguous (grouped by
       expert, then source) and runs an all-to-all with the other leaders only -- one message per
       pair of nodes, each ``R^2`` times larger than a flat all-to-all's;
    3. the leader reorders the arrivals by owner rank, expert, source and scatters them to the
       ranks of its node that own the experts.
    """
    c, me = _chunks(topology, num_experts), topology.rank
    node = topology.node_of(me)
    members = topology.nodes[node]
    leader = members[0]

    def node_experts(n: int) -> list[int]:
        return [e for q in topology.nodes[n] for e in c.experts(q)]

    if me == leader:
        gather = Phase(send=((me, c.source(me)),), recv=tuple((m, c.source(m)) for m in members))
        inter = Phase(
            send=tuple(
                (topology.leader(d), tuple(c.id(m, e) for e in node_experts(d) for m in members))
                for d in range(topology.num_nodes)
            ),
            recv=tuple(
                (topology.leader(a), tuple(c.id(m, e) for e in node_experts(node) for m in topology.nodes[a]))
                for a in range(topology.num_nodes)
            ),
        )
        scatter = Phase(send=tuple((q, c.target(q)) for q in members), recv=((me, c.target(me)),))
    else:
        gather = Phase(send=((leader, c.source(me)),), recv=())
        inter = Phase(send=(), recv=())
        scatter = Phase(send=(), recv=((leader, c.target(me)),))
    return Route("hierarchical", me, c.source(me), (gather, inter, scatter), c.target(me))


def two_level_route(topology: NodeTopology, num_experts: int) -> Route:
    """2D-hierarchical all-to-all: intra-node all-to-all, then inter-node among same-local-rank peers.

    1. rank ``(n, j)`` sends to its node peer ``(n, k)`` the rows for every expert owned by a rank
       with local index ``k`` (on any node);
    2. rank ``(n, k)`` sends to ``(d, k)`` the rows (from all of node ``n``) for the experts of
       ``(d, k)``.
    """
    if not topology.uniform:
        raise ValueError(
            "--moe-token-dispatcher-type hierarchical_2d needs the same number of expert-parallel ranks "
            f"on every node (got nodes {topology.nodes}); use hierarchical or alltoall"
        )
    c, me = _chunks(topology, num_experts), topology.rank
    node, local = topology.node_of(me), topology.local_rank(me)
    members = topology.nodes[node]
    owner_local = [topology.local_rank(c.owner(e)) for e in range(c.num_experts)]
    intra = Phase(
        send=tuple(
            (peer, tuple(c.id(me, e) for e in range(c.num_experts) if owner_local[e] == k))
            for k, peer in enumerate(members)
        ),
        recv=tuple(
            (peer, tuple(c.id(peer, e) for e in range(c.num_experts) if owner_local[e] == local))
            for peer in members
        ),
    )
    peers = [topology.nodes[d][local] for d in range(topology.num_nodes)]
    inter = Phase(
        send=tuple((q, tuple(c.id(s, e) for e in c.experts(q) for s in members)) for q in peers),
        recv=tuple(
            (q, tuple(c.id(s, e) for e in c.experts(me) for s in topology.nodes[d]))
            for d, q in enumerate(peers)
        ),
    )
    return Route("hierarchical_2d", me, c.source(me), (intra, inter), c.target(me))


ROUTE_BUILDERS: dict[str, Callable[[NodeTopology, int], Route]] = {
    "alltoall": flat_route,
    "hierarchical": hierarchical_route,
    "hierarchical_2d": two_level_route,
}


def route_names(topology: NodeTopology) -> list[str]:
    """Routes that this topology supports."""
    return [name for name in ROUTE_BUILDERS if name != "hierarchical_2d" or topology.uniform]


def all_rank_routes(name: str, topology: NodeTopology, num_experts: int) -> list[Route]:
    """The route ``name`` of every EP rank (what the cost model and the tests look at)."""
    builder = ROUTE_BUILDERS[name]
    return [builder(topology.with_rank(rank), num_experts) for rank in range(topology.size)]


def check_routes(routes: Sequence[Route]) -> None:
    """Raise AssertionError unless the routes of all ranks fit together.

    Checks, for every phase, that what ``p`` sends to ``q`` is what ``q`` expects from ``p`` (same
    chunks, same order), that each rank's buffer is a permutation of the chunks it holds, and that
    every chunk ends at the owner of its expert.
    """
    held = [sorted(route.source) for route in routes]
    num_phases = len(routes[0].phases)
    for k in range(num_phases):
        sent = {(r.rank, peer): ids for r in routes for peer, ids in r.phases[k].send}
        received = {(peer, r.rank): ids for r in routes for peer, ids in r.phases[k].recv}
        assert sent == received, f"phase {k}: sends and receives disagree"
        for r in routes:
            out = sorted(i for _, ids in r.phases[k].send for i in ids)
            assert out == held[r.rank], f"phase {k}: rank {r.rank} sends chunks it does not hold"
        held = [sorted(i for _, ids in r.phases[k].recv for i in ids) for r in routes]
    for r in routes:
        assert held[r.rank] == sorted(r.target), f"rank {r.rank} ends with the wrong chunks"
