"""DSelect-k: smooth-step values, binary encoding, weights on the simplex, at most k experts when binary."""

import math

import pytest
import torch

from megatron_evomoe.moe.routers.dselectk import (
    DSelectKRouter,
    binary_codes,
    dselect_weights,
    selector_outputs,
    smooth_step,
)
from tests.tiny import tiny_run


def _router(*flags):
    return DSelectKRouter(tiny_run("--moe-router-type", "dselectk", *flags).model)


def test_smooth_step_at_known_points():
    t = torch.tensor([-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 3.0])
    assert smooth_step(t, 1.0).tolist() == pytest.approx([0.0, 0.0, 5 / 32, 0.5, 27 / 32, 1.0, 1.0])
    assert smooth_step(torch.tensor([0.5, -1.0, 1.0]), 2.0).tolist() == pytest.approx([27 / 32, 0.0, 1.0])


def test_binary_codes_most_significant_bit_first():
    assert binary_codes(4).int().tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert binary_codes(5).shape == (5, 3) and binary_codes(5)[4].int().tolist() == [1, 0, 0]
    # One selector with soft bits a = S(z1), b = S(z2): r = [(1-a)(1-b), (1-a)b, a(1-b), ab].
    z = torch.tensor([[[-0.1, 0.3]]])
    a, b = smooth_step(z, 1.0)[0, 0].tolist()
    r = selector_outputs(z, binary_codes(4), 1.0)[0, 0]
    assert r.tolist() == pytest.approx([(1 - a) * (1 - b), (1 - a) * b, a * (1 - b), a * b])


def test_weights_sum_to_one_and_start_dense(megatron_world_of_one):
    router = _router()
    decision = router(torch.randn(64, 32), None)
    assert torch.allclose(decision.probs.sum(1), torch.ones(64), atol=1e-6)
    assert decision.routing_map.all()  # z ~ U(-gamma/100, gamma/100): every bit near 1/2
    assert torch.equal(decision.routing_map, decision.probs > 0)


@pytest.mark.parametrize("num_experts,k", [(4, 2), (8, 3), (8, 1)])
def test_binary_selectors_use_at_most_k_experts_with_weights_summing_to_one(megatron_world_of_one, num_experts, k):
    router = _router("--num-experts", str(num_experts), "--moe-router-topk", str(k))
    with torch.no_grad():  # saturate every bit: |z| >= gamma / 2
        router.z_weight.zero_()
        router.z_bias.copy_(torch.tensor([1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0][: router.z_bias.numel()]))
        router.selector_weight.normal_()
    decision = router(torch.randn(32, 32), None)
    assert (decision.routing_map.sum(1) <= k).all()
    assert torch.allclose(decision.probs.sum(1), torch.ones(32), atol=1e-6)
    assert torch.equal(decision.routing_map, decision.probs > 0)
    assert decision.logged_losses["entropy"].item() == pytest.approx(0.0, abs=1e-8)  # binary: no entropy


def test_entropy_regulariser_by_hand(megatron_world_of_one):
    router = _router("--dselectk-entropy-coeff", "0.01")
    with torch.no_grad():
        router.z_weight.normal_(0.0, 0.05)
    hidden = torch.randn(16, 32)
    decision = router(hidden, None)
    z = (hidden @ router.z_weight.detach().t() + router.z_bias.detach()).view(16, 2, 2)
    r = selector_outputs(z, binary_codes(4), 1.0)  # [T, k, E]
    entropy = -(r * torch.log(r + 1e-6)).sum() / 16
    assert decision.logged_losses["entropy"].item() == pytest.approx(0.01 * entropy.item(), rel=1e-5)
    weights, _ = dselect_weights(z, hidden @ router.selector_weight.detach().t() + router.selector_bias.detach(),
                                 binary_codes(4), 1.0)
    assert torch.allclose(decision.probs, weights, atol=1e-6)


def test_experts_not_a_power_of_two_penalise_unreachable_codes(megatron_world_of_one):
    router = _router("--num-experts", "3")
    decision = router(torch.randn(16, 32), None)
    assert (decision.probs.sum(1) <= 1 + 1e-6).all() and (decision.probs.sum(1) > 0.5).all()
    # sum over the 2 selectors of 1 / (mass on the 3 real experts) >= 2, about 2 * 4/3 when dense
    assert decision.logged_losses["unreachable"].item() == pytest.approx(2 * 4 / 3, rel=0.05)
    assert math.isfinite(decision.aux_loss.item())
