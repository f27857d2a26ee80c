"""The Dense-To-Sparse gate (EvoMoE eq. 8-10) against hand computations."""

import math

import numpy as np
import pytest
import torch

from megatron_evomoe.moe.balance import evomoe_balance_loss
from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.moe.routers import dts
from megatron_evomoe.moe.routers.dts import DTSRouter, dts_gate, gumbel_noise
from tests.distributed import run_ranks
from tests.moe.routers.router_ranks import dts_losses_under_sequence_parallel, dts_split_inputs
from tests.tiny import tiny_run


@pytest.fixture
def router(megatron_world_of_one):
    run = tiny_run("--moe-router-type", "dts", "--num-experts", "8")
    router = DTSRouter(run.model)
    router.set_layer_number(1)
    torch.manual_seed(0)
    router.weight.data.normal_(0.0, 1.0)
    return router


def _route(router, hidden, phase, temperature):
    router.set_routing_state(RoutingState(iteration=5, phase=phase, temperature=temperature))
    return router(hidden, None)


def test_large_temperature_keeps_nearly_all_experts_small_keeps_mostly_one(router):
    hidden = torch.randn(256, 32)
    router.eval()  # no gumbel noise: the statement is about tau alone
    hot = _route(router, hidden, "gate_sparsify", 50.0)
    cold = _route(router, hidden, "gate_sparsify", 0.05)
    assert hot.routing_map.sum(1).float().mean() > 7.9
    assert cold.routing_map.sum(1).float().mean() < 1.5


def test_threshold_without_renormalisation():
    logits = torch.tensor([[3.0, 0.0, -8.0, -9.0]])
    gate, kept, kept_map = dts_gate(logits, temperature=1.0, threshold=0.001)
    expected = torch.softmax(logits, dim=-1)
    assert torch.allclose(gate, expected)
    assert kept_map.tolist() == [[True, True, False, False]]
    # Kept weights are the raw softmax values: they sum to < 1 once experts are dropped.
    assert torch.allclose(kept[0, :2], expected[0, :2])
    assert kept.sum().item() < 1.0
    assert kept.sum().item() == pytest.approx(expected[0, :2].sum().item())


def test_gradients_reach_every_kept_expert_row_of_the_gate(router):
    router.eval()
    hidden = torch.randn(16, 32)
    decision = _route(router, hidden, "gate_sparsify", 50.0)
    assert decision.routing_map.all()  # hot enough that all 8 experts are kept
    upstream = torch.randn_like(decision.probs)
    (decision.probs * upstream).sum().backward()
    per_expert_grad = router.weight.grad.abs().sum(dim=1)
    assert (per_expert_grad > 0).all()


def test_no_noise_in_eval_noise_in_training(router):
    hidden = torch.randn(64, 32)
    router.eval()
    a = _route(router, hidden, "gate_sparsify", 1.0).probs
    b = _route(router, hidden, "gate_sparsify", 1.0).probs
    clean = dts_gate(router.gate_logits(hidden, router.weight), 1.0, router.evomoe.dts_threshold)[1]
    assert torch.equal(a, b) and torch.allclose(a, clean)
    router.train()
    c = _route(router, hidden, "gate_sparsify", 1.0).probs
    assert not torch.allclose(c, clean)


def test_top1_phase_keeps_the_raw_top_weight_and_is_noise_free_by_default(router):
    router.train()
    hidden = torch.randn(64, 32)
    decision = _route(router, hidden, "top1", 0.3)
    assert (decision.routing_map.sum(1) == 1).all()
    softmax = torch.softmax(router.gate_logits(hidden, router.weight) / 0.3, dim=-1)
    assert torch.allclose(decision.probs.sum(1), softmax.max(1).values)


def test_gumbel_noise_has_gumbel_moments():
    torch.manual_seed(0)
    sample = gumbel_noise((200000,), "cpu")
    assert sample.mean().item() == pytest.approx(0.5772, abs=0.01)  # Euler-Mascheroni
    assert sample.var().item() == pytest.approx(math.pi**2 / 6, abs=0.03)


def test_eq10_against_a_hand_computation():
    # 4 tokens, 2 experts. g' rows and the experts each token visits (g_i > 0).
    gate = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    kept = torch.tensor([[True, False], [True, True], [False, True], [True, True]])
    alpha, n, b = 0.1, 2, 4
    # count = (3, 3); sum g' = (2.4, 1.6)
    hand = alpha * n * ((3 / b**2) * 2.4 + (3 / b**2) * 1.6)
    assert evomoe_balance_loss(gate, kept, alpha).item() == pytest.approx(hand)


def _eq10_numpy(logits: np.ndarray, noise: np.ndarray, tau: float, c: float, alpha: float):
    """EvoMoE eq. 8-10 in float64: g' = softmax((logits + noise) / tau), count_i = tokens with g'_i > c.

    Returns (loss, count per expert)."""
    z = (logits + noise) / tau
    g = np.exp(z - z.max(axis=1, keepdims=True))
    g /= g.sum(axis=1, keepdims=True)
    batch, experts = g.shape
    count = (g > c).sum(axis=0)
    return alpha * experts * float(np.sum(count / batch**2 * g.sum(axis=0))), count


def test_router_loss_matches_eq10(router, monkeypatch):
    router.train()
    hidden = torch.randn(32, 32, generator=torch.Generator().manual_seed(3))
    noise = torch.distributions.Gumbel(0.0, 1.0).sample((32, 8))  # known draws, injected
    monkeypatch.setattr(dts, "gumbel_noise", lambda shape, device, dtype=torch.float32: noise.to(dtype))
    router.set_routing_state(RoutingState(iteration=5, phase="gate_sparsify", temperature=1.7))
    decision = router(hidden, None)
    logits = hidden.double().numpy() @ router.weight.detach().double().numpy().T
    expected, _ = _eq10_numpy(logits, noise.double().numpy(), 1.7, 0.001, 0.1)  # alpha 0.1: EvoMoE sec. V-A
    assert decision.aux_loss.item() == pytest.approx(expected, rel=1e-5)
    assert decision.logged_losses["balance"].item() == pytest.approx(expected, rel=1e-5)


def test_split_sequence_losses_add_up_to_the_whole():
    """Two sequence-parallel ranks each route half the tokens; through ``Router.sequence_sum`` their
    losses add up to eq. 10 of the whole sequence (with local counts they would not)."""
    hidden, noise, weight = dts_split_inputs()
    per_rank = run_ranks(dts_losses_under_sequence_parallel, 2)
    logits = hidden.double().numpy() @ weight.double().numpy().T
    whole, counts = _eq10_numpy(logits, noise.double().numpy(), 1.3, 0.001, 0.1)
    assert sum(r["loss"] for r in per_rank) == pytest.approx(whole, rel=1e-5)
    assert all(0 < r["loss"] < whole for r in per_rank)  # each half carries a part
    # The counts each rank used are the all-reduced ones of the whole sequence.
    assert per_rank[0]["counts"] == per_rank[1]["counts"] == counts.tolist()
