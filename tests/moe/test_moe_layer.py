"""The MoE layer against the dense FFN, and capacity dropping against hand-made cases."""

import pytest
import torch

from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.capacity import apply_capacity, expert_capacity
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.router import RoutingState
from tests.tiny import tiny_run


def test_one_expert_moe_layer_equals_the_dense_mlp_with_the_same_weights(megatron_world_of_one):
    run = tiny_run("--num-experts", "1", "--moe-layer-freq", "1")
    model = build_gpt_model(run.model)
    layer = moe_layers([model])[0]
    layer.set_routing_state(RoutingState())
    expert = layer.experts.local_experts[0]
    hidden = torch.randn(16, 2, 32, requires_grad=True)
    moe_out, _ = layer(hidden)
    # With one expert the softmax weight is exactly 1: the layer is the expert's FFN.
    dense = torch.nn.functional.linear(
        torch.nn.functional.gelu(torch.nn.functional.linear(hidden, expert.linear_fc1.weight)),
        expert.linear_fc2.weight,
    )
    assert torch.allclose(moe_out, dense, atol=1e-6)
    moe_out.sum().backward()
    grad_moe = expert.linear_fc1.weight.grad.clone()
    expert.linear_fc1.weight.grad = None
    hidden2 = hidden.detach().requires_grad_()
    torch.nn.functional.linear(
        torch.nn.functional.gelu(torch.nn.functional.linear(hidden2, expert.linear_fc1.weight)),
        expert.linear_fc2.weight,
    ).sum().backward()
    assert torch.allclose(grad_moe, expert.linear_fc1.weight.grad, atol=1e-6)


def test_capacity_formula():
    assert expert_capacity(num_tokens=10, num_experts=4, topk=1, capacity_factor=1.0) == 3
    assert expert_capacity(num_tokens=10, num_experts=4, topk=2, capacity_factor=1.5) == 8


def _example():
    # 5 tokens, 2 experts; tokens 0,1,2,4 want expert 0, token 3 wants expert 1; token 4 also 1.
    routing_map = torch.tensor([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]], dtype=torch.bool)
    probs = torch.tensor([[0.9, 0], [0.2, 0], [0.6, 0], [0, 0.7], [0.5, 0.4]])
    return probs, routing_map


def test_capacity_by_probability_keeps_the_heaviest_tokens():
    probs, routing_map = _example()
    kept_probs, kept = apply_capacity(probs, routing_map, capacity=2, policy="probs")
    assert kept[:, 0].nonzero().flatten().tolist() == [0, 2]  # 0.9 and 0.6 beat 0.5 and 0.2
    assert kept[:, 1].nonzero().flatten().tolist() == [3, 4]
    assert kept_probs[1, 0] == 0 and kept_probs[4, 0] == 0 and kept_probs[4, 1] == pytest.approx(0.4)


def test_capacity_by_position_keeps_the_earliest_tokens():
    probs, routing_map = _example()
    _, kept = apply_capacity(probs, routing_map, capacity=2, policy="position")
    assert kept[:, 0].nonzero().flatten().tolist() == [0, 1]
    assert kept[:, 1].nonzero().flatten().tolist() == [3, 4]


def test_capacity_in_the_layer_drops_tokens(megatron_world_of_one):
    run = tiny_run("--moe-expert-capacity-factor", "0.5")
    model = build_gpt_model(run.model)
    layer = moe_layers([model])[0]
    layer.set_routing_state(RoutingState())
    layer(torch.randn(16, 2, 32))
    # capacity = ceil(0.5 * 32 tokens / 4 experts) = 4 per expert: at most 16 of 32 tokens computed.
    tokens_per_expert, scalars, _ = layer.stats.snapshot()
    assert tokens_per_expert.max().item() <= 4
    assert scalars[2].item() >= 16  # tokens that reached no expert
