"""The all-to-all dispatchers on gloo processes: results, gradients and messages.

One spawn per topology runs many cases (spawning dominates the cost on a small machine; the 2x2
world is shared with the training tests, see conftest.py):

* 2 nodes x 2 ranks (world 4): alltoall, hierarchical, hierarchical_2d and auto against a
  communication-free reference and against the allgather dispatcher -- outputs and gradients of
  the hidden states, gate weights and expert weights; random routes to 0..E experts, top-1/top-2,
  an expert nobody visits, no token routed at all, bf16, capacity dropping; and again with expert
  tensor parallelism 2 (EP 2 x ETP 2);
* 2 nodes x 4 ranks (world 8): the same dispatchers against the reference and each other.

Message logs of one dispatch + combine + backward with every chunk non-empty are compared with the
formulas of ``routes.py``.
"""

import pytest

from tests.distributed import run_ranks
from tests.moe.dispatch.dispatch_ranks import checks_2x4

KINDS = ("counts", "dispatch", "combine", "dispatch_grad", "combine_grad")


@pytest.fixture(scope="module")
def two_by_two(world_of_four_report):
    """The world-4 spawn shared with the training tests (conftest.py)."""
    return [rank["dispatch"] for rank in world_of_four_report]


@pytest.fixture(scope="module")
def two_by_four():
    return run_ranks(checks_2x4, 8)


def _totals(reports, route, kind, level):
    return sum(r["messages"][route]["messages"].get((kind, level), 0) for r in reports)


def _check_formulas(reports, nodes, per_node):
    size = nodes * per_node
    leaders = {n * per_node for n in range(nodes)}
    for kind in KINDS:
        assert _totals(reports, "hierarchical", kind, "inter") == nodes * (nodes - 1), kind
        assert _totals(reports, "hierarchical", kind, "intra") == 2 * (size - nodes), kind
        if kind != "counts":
            assert _totals(reports, "alltoall", kind, "inter") == nodes * (nodes - 1) * per_node**2, kind
            assert _totals(reports, "alltoall", kind, "intra") == nodes * per_node * (per_node - 1), kind
            assert _totals(reports, "hierarchical_2d", kind, "inter") == nodes * (nodes - 1) * per_node, kind
            assert _totals(reports, "hierarchical_2d", kind, "intra") == nodes * per_node * (per_node - 1), kind
    for rank, report in enumerate(reports):
        messages = report["messages"]["hierarchical"]["messages"]
        inter = sum(n for (_, level), n in messages.items() if level == "inter")
        assert (inter > 0) == (rank in leaders), f"rank {rank} talks across nodes: {inter}"


def test_two_by_two_matches_the_reference_and_allgather(two_by_two):
    # each rank asserted every case (tolerance 1e-5 fp32, 3e-2 bf16); the worst differences:
    assert max(r["max_diff"] for r in two_by_two) < 0.05
    assert max(r["max_diff_etp2"] for r in two_by_two) < 0.05


def test_two_by_two_message_counts(two_by_two):
    _check_formulas(two_by_two, nodes=2, per_node=2)


def test_auto_follows_the_cost_model(two_by_two):
    for report in two_by_two:
        assert report["auto"]["latency"] == {"hierarchical": 1}
        assert report["auto"]["intra_bandwidth"] == {"alltoall": 1}


def test_two_by_four_matches_the_reference(two_by_four):
    assert max(r["max_diff"] for r in two_by_four) < 0.05


def test_two_by_four_message_counts(two_by_four):
    _check_formulas(two_by_four, nodes=2, per_node=4)
