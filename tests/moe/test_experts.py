"""The output-scaled expert MLP equals megatron's SequentialMLP on the same weights."""

import torch
from megatron.core.transformer.moe.experts import SequentialMLP

from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.experts import OutputScaledSequentialMLP
from tests.tiny import tiny_run


def test_scaling_the_output_equals_scaling_the_intermediate(megatron_world_of_one):
    experts = moe_layers([build_gpt_model(tiny_run().model)])[0].experts
    assert isinstance(experts, OutputScaledSequentialMLP)  # what the layer spec builds
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(10, 32, generator=gen, requires_grad=True)
    probs = torch.rand(10, generator=gen, requires_grad=True)
    counts = torch.tensor([3, 0, 5, 2])  # an expert without tokens too
    ours, _ = experts(rows, counts, probs)
    theirs, _ = SequentialMLP.forward(experts, rows, counts, probs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    grad = torch.randn(10, 32, generator=gen)
    ours_grads = torch.autograd.grad(ours, [rows, probs, *experts.parameters()], grad)
    theirs_grads = torch.autograd.grad(theirs, [rows, probs, *experts.parameters()], grad)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
