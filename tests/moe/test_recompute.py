"""MoE-aware recomputation: same gradients, fewer saved bytes, no all-to-all re-run in backward.

The segment checkpoint on its own here; the MoE layer with an expert-parallel all-to-all dispatcher
in ``tests/moe/dispatch/test_recompute_dispatch.py`` (it shares a world of 4 processes).
"""

import pytest
import torch

from megatron_evomoe.moe.activation_memory import SavedTensorMeter
from megatron_evomoe.moe.recompute import MoERecompute, checkpoint


def _segment(x, weight):
    """A little FFN with dropout (RNG) and an integer output, like the router segment."""
    hidden = torch.nn.functional.dropout(torch.relu(x @ weight), p=0.5, training=True)
    return hidden @ weight.t(), (hidden > 0).sum(-1), {"note": "kept as is"}


def _run(recompute: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(8, 16, generator=gen).requires_grad_()
    weight = torch.randn(16, 64, generator=gen).requires_grad_()
    torch.manual_seed(seed)
    with SavedTensorMeter([weight]) as meter:
        out, count, extra = checkpoint(_segment, x, weight) if recompute else _segment(x, weight)
    torch.manual_seed(seed + 100)  # backward must restore the forward's RNG state by itself
    out.square().sum().backward()
    return out.detach(), count, extra, x.grad, weight.grad, meter.saved_bytes


def test_checkpoint_matches_the_plain_function_and_saves_only_its_inputs():
    plain = _run(recompute=False)
    recomputed = _run(recompute=True)
    for a, b in zip(plain[:5], recomputed[:5]):
        if isinstance(a, dict):
            assert a == b
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    x_bytes, count_bytes = 8 * 16 * 4, 8 * 8
    assert recomputed[5] == x_bytes + count_bytes  # the input and the integer output, nothing inside
    assert plain[5] > 4 * recomputed[5]


def test_checkpoint_refuses_a_segment_whose_discrete_output_changes():
    calls = []

    def flaky(x):
        calls.append(1)
        return x * 2, torch.tensor([len(calls)])

    x = torch.randn(3, requires_grad=True)
    out, _ = checkpoint(flaky, x)
    with pytest.raises(RuntimeError, match="recomputed routing differs"):
        out.sum().backward()


def test_moe_recompute_modes_run_the_segment_once_or_again_in_backward():
    """``none`` keeps the segment's internals and never re-runs it; ``moe_aware`` keeps only its
    inputs and runs it a second time in backward; both give the plain gradients."""
    gen = torch.Generator().manual_seed(4)
    x0 = torch.randn(8, 16, generator=gen)
    weight0 = torch.randn(16, 64, generator=gen)
    results = {}
    for mode in ("none", "moe_aware"):
        calls = []

        def segment(x, weight):
            calls.append(torch.is_grad_enabled())
            return torch.tanh(x @ weight) @ weight.t()

        x, weight = x0.clone().requires_grad_(), weight0.clone().requires_grad_()
        with SavedTensorMeter([weight]) as meter:
            out = MoERecompute(mode)(segment, x, weight)
        forward_calls = len(calls)
        out.square().sum().backward()
        results[mode] = (forward_calls, len(calls), meter.saved_bytes, x.grad, weight.grad)
    none, aware = results["none"], results["moe_aware"]
    assert none[:2] == (1, 1)  # run once, nothing in backward
    assert aware[:2] == (1, 2)  # run again in backward
    assert aware[2] == 8 * 16 * 4  # only the input x is kept
    assert none[2] == 8 * 16 * 4 + 8 * 64 * 4  # x and the [8, 64] tanh output (its backward reads it)
    torch.testing.assert_close(aware[3], none[3], rtol=0, atol=0)
    torch.testing.assert_close(aware[4], none[4], rtol=0, atol=0)
    with pytest.raises(ValueError, match="--moe-recompute"):
        MoERecompute("sometimes")


def test_moe_aware_flags_are_validated():
    from tests.tiny import tiny_run

    assert tiny_run("--moe-recompute", "moe_aware").model.moe_recompute == "moe_aware"
    tiny_run("--moe-recompute", "moe_aware", "--recompute-granularity", "selective")
    full = tiny_run("--moe-recompute", "moe_aware", "--recompute-granularity", "full",
                    "--moe-token-dispatcher-type", "alltoall")
    assert full.model.recompute_granularity == "full"
    with pytest.raises(ValueError, match="replays the all-to-alls: choose an all-to-all"):
        tiny_run("--moe-recompute", "moe_aware", "--recompute-granularity", "full")
    with pytest.raises(ValueError, match="does not divide the world size"):
        tiny_run("--moe-ranks-per-node", "3", world_size=4)
