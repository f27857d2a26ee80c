"""Guard: routing token ids reach our MoE layer through megatron-core's ``padding_mask`` unchanged.

Hash routing and StableMoE route by token id; the ids ride in ``padding_mask``, which megatron-core
0.16.x threads unchanged from ``GPTModel.forward`` to every MLP (``moe/token_ids.py``). If an upgrade
gives ``padding_mask`` a meaning of its own on the way (newer megatron-core turns it into a bool
padding mask), this test fails before any router silently loses its ids.
"""

import pytest
import torch

from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.layer import MoELayer
from tests.tiny import VOCAB, tiny_run

MESSAGE = (
    "megatron-core no longer hands our MoE layer the int64 token ids given to GPTModel as padding_mask: "
    "hash and StableMoE routing would lose their ids (see megatron_evomoe/moe/token_ids.py)"
)


def _received_padding_masks(*flags):
    """Run a forward and backward; returns (the token ids given, every padding_mask our MoE layers got)."""
    model = build_gpt_model(tiny_run("--moe-router-type", "hash", *flags).model)
    received = []
    for module in model.modules():
        if isinstance(module, MoELayer):
            module.register_forward_pre_hook(
                lambda _m, _args, kwargs: received.append(kwargs.get("padding_mask")), with_kwargs=True
            )
    tokens = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(16).expand(2, 16)
    loss = model(tokens, positions, None, labels=tokens, padding_mask=tokens)
    loss.sum().backward()
    return tokens, received


@pytest.mark.parametrize(
    "flags, calls_per_layer",
    [
        ((), 1),  # the forward path
        (("--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"), 2),
    ],
)
def test_our_moe_layer_receives_exactly_the_token_ids(megatron_world_of_one, flags, calls_per_layer):
    tokens, received = _received_padding_masks(*flags)
    assert len(received) == 2 * calls_per_layer, MESSAGE  # 2 MoE layers; recomputation runs them again
    for padding_mask in received:
        assert padding_mask is not None and padding_mask.dtype == torch.int64, MESSAGE
        assert padding_mask.shape == tokens.shape and torch.equal(padding_mask, tokens), MESSAGE
