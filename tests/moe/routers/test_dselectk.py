"""DSelect-k: smooth-step values, binary encoding, weights on the simplex, at most k experts when binary."""

import math

import numpy as np
import pytest
import torch

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.moe.routers.dselectk import DSelectKRouter, binary_codes, selector_outputs, smooth_step
from megatron_evomoe.run_config import build_run_config
from tests.tiny import tiny_run, with_required


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


def _dselect_numpy(x, z_weight, z_bias, a_weight, a_bias, k, num_experts, gamma):
    """The paper's gate from the parameters alone, in float64: bits S(z), selectors r, weights q."""
    m = int(np.ceil(np.log2(num_experts)))
    z = (x @ z_weight.T + z_bias).reshape(len(x), k, m)
    t = np.clip(z, -gamma / 2, gamma / 2)
    bits = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5  # S(z): exactly 0 / 1 outside the cubic region
    codes = np.array([[int(b) for b in np.binary_repr(i, width=m)] for i in range(num_experts)])  # MSB first
    r = np.prod(np.where(codes[None, None] == 1, bits[:, :, None, :], 1 - bits[:, :, None, :]), axis=-1)
    alpha = x @ a_weight.T + a_bias
    mix = np.exp(alpha - alpha.max(1, keepdims=True))
    mix /= mix.sum(1, keepdims=True)
    return (mix[:, :, None] * r).sum(1), r


def test_entropy_regulariser_by_hand(megatron_world_of_one):
    router = _router("--dselectk-entropy-coeff", "0.01")
    with torch.no_grad():
        router.z_weight.normal_(0.0, 0.05)
    hidden = torch.randn(16, 32)
    decision = router(hidden, None)
    params = [p.detach().double().numpy() for p in
              (router.z_weight, router.z_bias, router.selector_weight, router.selector_bias)]
    q, r = _dselect_numpy(hidden.double().numpy(), *params, k=2, num_experts=4, gamma=1.0)
    entropy = -(r * np.log(r + 1e-6)).sum() / 16  # per token, summed over the k selectors
    assert decision.logged_losses["entropy"].item() == pytest.approx(0.01 * entropy, rel=1e-5)
    np.testing.assert_allclose(decision.probs.detach().numpy(), q, atol=1e-6)


def test_entropy_default_is_the_official_scale():
    """google-research dselect_k_moe: EntropyRegularizer(schedule_fn=lambda x: 1e-6) times the entropy
    *summed* over the batch. Here a per-token mean: 1e-6 x tokens per micro-batch (2 x 16)."""
    config = build_run_config(parse_args(with_required("--num-experts", "4", "--moe-router-type", "dselectk",
                                                       "--micro-batch-size", "2", "--seq-length", "16")), 128, 1)
    assert config.model.moe_router.dselectk_entropy_coeff == pytest.approx(1e-6 * 2 * 16)


def test_experts_not_a_power_of_two_penalise_unreachable_codes(megatron_world_of_one):
    router = _router("--num-experts", "3")
    decision = router(torch.randn(16, 32), None)
    assert (decision.probs.sum(1) <= 1 + 1e-6).all() and (decision.probs.sum(1) > 0.5).all()
    # sum over the 2 selectors of 1 / (mass on the 3 real experts) >= 2, about 2 * 4/3 when dense
    assert decision.logged_losses["unreachable"].item() == pytest.approx(2 * 4 / 3, rel=0.05)
    assert math.isfinite(decision.aux_loss.item())
