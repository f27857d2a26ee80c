"""Switch router (top-1) against hand computations; capacity dropping of its tokens."""

import numpy as np
import pytest
import torch

from megatron_evomoe.moe.capacity import apply_capacity, expert_capacity
from megatron_evomoe.moe.routers.switch import SwitchRouter, multiplicative_jitter
from tests.moe.routers.oracles import NUM_EXPERTS, NUM_TOKENS, router_with_random_gate, softmax64

def test_switch_top1_unnormalised_weight_and_paper_balance_loss(megatron_world_of_one):
    router = router_with_random_gate(SwitchRouter, "--moe-router-type", "switch")
    hidden = torch.randn(NUM_TOKENS, 32)
    decision = router(hidden, None)
    p = softmax64(hidden, router.weight.detach())
    top = p.argmax(axis=1)
    assert decision.routing_map.tolist() == np.eye(NUM_EXPERTS, dtype=bool)[top].tolist()
    np.testing.assert_allclose(decision.probs.detach().numpy(), p * np.eye(NUM_EXPERTS)[top], atol=1e-6)
    f = np.bincount(top, minlength=NUM_EXPERTS) / NUM_TOKENS
    expected = 0.01 * NUM_EXPERTS * np.sum(f * p.mean(axis=0))  # alpha * N * sum_i f_i P_i
    assert decision.aux_loss.item() == pytest.approx(expected, rel=1e-5)
    assert decision.logged_losses["balance"].item() == pytest.approx(expected, rel=1e-5)
    router.eval()
    assert router(hidden, None).aux_loss is None


def test_switch_jitter_is_multiplicative_bounded_and_training_only(megatron_world_of_one):
    x = torch.randn(1000, 8)
    ratio = multiplicative_jitter(x, 0.1) / x
    assert ratio.min() >= 0.9 and ratio.max() <= 1.1 and ratio.std() > 0.01
    router = router_with_random_gate(SwitchRouter, "--moe-router-type", "switch", "--moe-input-jitter-eps", "0.5")
    hidden = torch.randn(256, 32)
    router.eval()
    clean = router(hidden, None)
    assert torch.equal(router(hidden, None).probs, clean.probs)
    router.train()
    noisy = router(hidden, None)
    assert not torch.equal(noisy.probs, clean.probs)


def test_capacity_drops_the_right_tokens():
    # Switch: five tokens choose expert 0, one expert 1; capacity ceil(1.0 * 6 * 1 / 2) = 3.
    p0 = torch.tensor([0.9, 0.6, 0.8, 0.7, 0.55, 0.3])
    probs = torch.stack([p0, 1 - p0], dim=1)
    routing_map = torch.tensor([[True, False]] * 5 + [[False, True]])
    capacity = expert_capacity(6, 2, 1, 1.0)
    assert capacity == 3
    _, by_prob = apply_capacity(probs * routing_map, routing_map, capacity, "probs")
    _, by_position = apply_capacity(probs * routing_map, routing_map, capacity, "position")
    assert by_prob[:, 0].nonzero().flatten().tolist() == [0, 2, 3]
    assert by_position[:, 0].nonzero().flatten().tolist() == [0, 1, 2]
    assert by_prob[5, 1] and by_position[5, 1]


def test_capacity_on_a_switch_decision_keeps_the_earliest_tokens_of_each_expert(megatron_world_of_one):
    router = router_with_random_gate(SwitchRouter, "--moe-router-type", "switch")
    decision = router(torch.randn(NUM_TOKENS, 32), None)
    capacity = expert_capacity(NUM_TOKENS, NUM_EXPERTS, 1, 0.5)  # ceil(0.5 * 48 / 4) = 6
    probs, kept = apply_capacity(decision.probs, decision.routing_map, capacity, "position")
    for expert in range(NUM_EXPERTS):
        chosen = decision.routing_map[:, expert].nonzero().flatten()
        assert kept[:, expert].nonzero().flatten().tolist() == chosen[:capacity].tolist()
    assert torch.equal(probs, decision.probs * kept)
