"""fp32 gate logits that keep the router input as it is: same values and gradients as autograd's
``F.linear(x.float() * n, W.float())``, without its fp32 / jittered copy of the tokens."""

import functools

import pytest
import torch
import torch.nn.functional as F

from megatron_evomoe.moe.activation_memory import SavedTensorMeter
from megatron_evomoe.moe.router import fp32_gate_logits
from megatron_evomoe.moe.routers.switch import jitter_noise


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_values_gradients_and_what_is_kept(dtype, eps):
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 16, generator=gen).to(dtype)
    weight = torch.randn(4, 16, generator=gen).to(dtype)
    grad = torch.randn(40, 4, generator=gen)
    noise = functools.partial(jitter_noise, eps=eps, seed=123) if eps else None

    x, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with SavedTensorMeter([w]) as meter:
        ours = fp32_gate_logits(x, w, noise)
    ours.backward(grad)

    x_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    router_input = x_ref.float() * (noise(x_ref) if noise else 1.0)
    reference = F.linear(router_input, w_ref.float())
    reference.backward(grad)

    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=0, atol=0)
    assert meter.saved_bytes == x.untyped_storage().nbytes()  # the input itself, nothing else


def test_jitter_noise_is_reproducible_and_bounded():
    like = torch.empty(1000, 8)
    a, b = jitter_noise(like, 0.01, seed=7), jitter_noise(like, 0.01, seed=7)
    assert torch.equal(a, b) and not torch.equal(a, jitter_noise(like, 0.01, seed=8))
    assert a.dtype == torch.float32 and 0.99 <= a.min() and a.max() <= 1.01
