"""Capacity for gates whose tokens visit a varying number of experts (DTS while dense, DSelect-k):
sized from the pairs the gate selected, and logged as what happened (pairs kept, pairs dropped)."""

import math

import numpy as np
import pytest
import torch

from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.moe.stats import SCALARS
from megatron_evomoe.training.routing_metrics import StepRouting
from tests.tiny import tiny_run

FACTOR = 1.25


def _layer(*flags):
    layer = moe_layers([build_gpt_model(tiny_run("--moe-expert-capacity-factor", str(FACTOR), *flags).model)])[0]
    if hasattr(layer.router, "weight"):  # a gate with some preference (DSelect-k starts dense anyway)
        layer.router.weight.data.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(0))
    return layer


def _kept_by_hand(weights: np.ndarray, selected: np.ndarray, capacity: int) -> np.ndarray:
    """Each expert keeps its ``capacity`` selected tokens of largest weight (policy ``probs``)."""
    kept = np.zeros_like(selected)
    for expert in range(selected.shape[1]):
        rows = np.flatnonzero(selected[:, expert])
        best = rows[np.argsort(-weights[rows, expert], kind="stable")][:capacity]
        kept[best, expert] = True
    return kept


@pytest.mark.parametrize("router, state", [
    ("dts", RoutingState(iteration=3, phase="gate_sparsify", temperature=2.0)),  # the dense start
    ("dselectk", RoutingState()),
])
def test_capacity_is_sized_from_the_selected_pairs(megatron_world_of_one, router, state):
    layer = _layer("--moe-router-type", router)
    layer.set_routing_state(state)
    layer.eval()  # no gumbel noise: the router's decision can be recomputed outside the layer
    tokens = torch.randn(64, 32)
    with torch.no_grad():
        decision = layer.router(tokens, None)
        probs, kept, num_selected, _, _ = layer._route(tokens, None)
    selected = decision.routing_map.numpy()
    assert int(num_selected) == selected.sum() > 2 * 64  # dense: several experts per token
    capacity = math.ceil(FACTOR * selected.sum() / 4)  # factor x the mean load, not x T * k / E
    expected = _kept_by_hand(decision.probs.numpy(), selected, capacity)
    assert kept.numpy().tolist() == expected.tolist()
    assert np.minimum(selected.sum(0), capacity).sum() == expected.sum()
    # With the nominal k = 1 an expert would keep ceil(1.25 * 64 / 4) = 20 tokens: most pairs lost.
    assert expected.sum() > 4 * 20


def test_fixed_k_routers_keep_capacity_from_t_times_k(megatron_world_of_one):
    layer = _layer("--moe-router-type", "switch")
    layer.set_routing_state(RoutingState())
    layer.eval()
    with torch.no_grad():
        _, kept, num_selected, _, _ = layer._route(torch.randn(64, 32), None)
    assert int(num_selected) == 64
    assert kept.sum(0).max() <= math.ceil(FACTOR * 64 * 1 / 4)


def test_the_logs_separate_dropped_pairs_from_dropped_tokens(megatron_world_of_one):
    layer = _layer("--moe-router-type", "dts", "--moe-expert-capacity-factor", "0.3")
    layer.set_routing_state(RoutingState(iteration=3, phase="gate_sparsify", temperature=2.0))
    layer.train()
    torch.manual_seed(5)
    layer(torch.randn(16, 2, 32))
    _, scalars, _ = layer.stats.snapshot()
    stats = dict(zip(SCALARS, scalars.tolist()))
    assert stats["num_tokens"] == 32 and stats["num_selected"] > stats["num_assignments"] > 0
    capacity = math.ceil(0.3 * stats["num_selected"] / 4)
    assert stats["num_assignments"] <= 4 * capacity
    step = StepRouting(
        tokens_per_expert=[[0.0] * 4], num_tokens=[stats["num_tokens"]],
        num_assignments=[stats["num_assignments"]], num_unrouted=[stats["num_unrouted"]],
        num_selected=[stats["num_selected"]],
    )
    dropped_pairs = (stats["num_selected"] - stats["num_assignments"]) / stats["num_selected"]
    assert step.dropped_pair_fraction() == [pytest.approx(dropped_pairs)]
    assert step.dropped_fraction() == [pytest.approx(stats["num_unrouted"] / 32)]


def test_step_routing_fractions_by_hand():
    # Layer 0: 100 tokens chose 400 pairs, 300 computed, 5 tokens lost every expert.
    step = StepRouting([[0.0]], [100.0], [300.0], [5.0], [400.0])
    assert step.dropped_pair_fraction() == [0.25] and step.dropped_fraction() == [0.05]
    assert step.experts_per_token() == [3.0]
    both = step.add(StepRouting([[0.0]], [100.0], [100.0], [0.0], [100.0]))
    assert both.dropped_pair_fraction() == [pytest.approx((500 - 400) / 500)]
