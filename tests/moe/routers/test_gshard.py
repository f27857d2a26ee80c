"""GShard router (top-2) against hand computations; first choices win the capacity."""

import numpy as np
import pytest
import torch

from megatron_evomoe.moe.capacity import apply_capacity, expert_capacity
from megatron_evomoe.moe.routers.gshard import GShardRouter, top2_gating
from tests.moe.routers.oracles import NUM_EXPERTS, NUM_TOKENS, router_with_random_gate, softmax64

def test_gshard_pair_normalised_weights_and_first_choice_balance_loss(megatron_world_of_one):
    router = router_with_random_gate(GShardRouter, "--moe-router-type", "gshard")
    hidden = torch.randn(NUM_TOKENS, 32)
    decision = router(hidden, None)
    p = softmax64(hidden, router.weight.detach())
    order = np.argsort(-p, axis=1)
    first, second = order[:, 0], order[:, 1]
    rows = np.arange(NUM_TOKENS)
    g1, g2 = p[rows, first], p[rows, second]
    expected = np.zeros_like(p)
    expected[rows, first] = g1 / (g1 + g2)
    expected[rows, second] = g2 / (g1 + g2)
    np.testing.assert_allclose(decision.probs.detach().numpy(), expected, atol=1e-6)
    assert decision.routing_map.tolist() == (expected > 0).tolist()
    # GShard counts first choices only: (1/E) sum_e (c_e/S) m_e, times E^2.
    c = np.bincount(first, minlength=NUM_EXPERTS) / NUM_TOKENS
    loss = 0.01 * NUM_EXPERTS * np.sum(c * p.mean(axis=0))
    assert decision.aux_loss.item() == pytest.approx(loss, rel=1e-5)
    both = 0.01 * NUM_EXPERTS * np.sum(decision.routing_map.sum(0).numpy() / NUM_TOKENS * p.mean(axis=0))
    assert abs(loss - both) > 1e-4  # counting both choices would be a different loss


def test_gshard_random_routing_keeps_second_expert_iff_twice_its_weight_beats_the_draw(megatron_world_of_one):
    router = router_with_random_gate(GShardRouter, "--moe-router-type", "gshard", "--gshard-random-routing")
    hidden = torch.randn(512, 32)
    torch.manual_seed(5)
    decision = router(hidden, None)
    torch.manual_seed(5)
    draw = torch.rand(512)
    probs = torch.softmax(hidden @ router.weight.detach().t(), dim=-1)
    top_values, top_index = probs.topk(2, dim=-1)
    g2 = top_values[:, 1] / top_values.sum(1)
    keep = 2 * g2 > draw
    assert decision.routing_map.gather(1, top_index[:, :1]).all()
    assert decision.routing_map.gather(1, top_index[:, 1:]).squeeze(1).tolist() == keep.tolist()
    assert 0 < keep.float().mean() < 1
    router.eval()
    assert (router(hidden, None).routing_map.sum(1) == 2).all()  # deterministic evaluation


def test_top2_gating_by_hand():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    weights, routing_map, first = top2_gating(probs, torch.tensor([0.8, 0.1]))
    # token 0: g2 = 0.375, 2 * 0.375 = 0.75 < 0.8 -> second dropped, first keeps 0.625
    assert torch.allclose(weights, torch.tensor([[0.625, 0.0, 0.0], [0.0, 2 / 9, 7 / 9]]))
    assert routing_map.tolist() == [[True, False, False], [False, True, True]]
    assert first.tolist() == [[True, False, False], [False, False, True]]


def test_capacity_keeps_first_choices_before_second_choices():
    # GShard: first choices (weight >= 0.5) fill expert 0 before second choices under "probs".
    weights, gshard_map, _ = top2_gating(torch.tensor([[0.4, 0.6], [0.3, 0.7], [0.7, 0.3], [0.55, 0.45]]))
    capacity = expert_capacity(4, 2, 2, 0.5)
    assert capacity == 2
    _, kept = apply_capacity(weights, gshard_map, capacity, "probs")
    assert kept[:, 0].tolist() == [False, False, True, True]
    assert kept[:, 1].tolist() == [True, True, False, False]
