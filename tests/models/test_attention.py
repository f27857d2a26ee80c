"""SDPA core attention against a hand-written softmax attention, with causal and document masks."""

import math

import torch

from megatron_evomoe.models.attention import SDPACoreAttention
from megatron_evomoe.models.gpt import build_gpt_model, gpt_forward
from megatron.core.transformer.enums import AttnMaskType
from tests.tiny import tiny_run


def _reference(q, k, v, blocked):
    # q, k, v: [s, b, n, d]; blocked: [s, s] True = not allowed.
    scores = torch.einsum("qbnd,kbnd->bnqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(blocked, float("-inf"))
    out = torch.einsum("bnqk,kbnd->qbnd", torch.softmax(scores, dim=-1), v)
    return out.reshape(q.shape[0], q.shape[1], -1)


def test_causal_and_per_document_masks(megatron_world_of_one):
    config = tiny_run().model
    attention = SDPACoreAttention(config, 1, AttnMaskType.causal, "self").eval()
    s, b, n, d = 8, 2, 4, 8
    q, k, v = (torch.randn(s, b, n, d) for _ in range(3))
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
    assert torch.allclose(attention(q, k, v, None), _reference(q, k, v, causal), atol=1e-5)
    # Two documents of 5 and 3 tokens: causal inside each, nothing across.
    document = torch.tensor([0] * 5 + [1] * 3)
    blocked = causal | (document[:, None] != document[None, :])
    mask = blocked.expand(b, 1, s, s)
    assert torch.allclose(attention(q, k, v, mask), _reference(q, k, v, blocked), atol=1e-5)


def test_reset_attention_mask_isolates_documents_in_the_model(megatron_world_of_one):
    model = build_gpt_model(tiny_run().model).eval()
    s = 16
    tokens = torch.randint(0, 128, (1, s))
    document = torch.tensor([0] * 10 + [1] * 6)
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
    mask = (causal | (document[:, None] != document[None, :])).expand(1, 1, s, s)
    positions = torch.cat([torch.arange(10), torch.arange(6)])[None]

    def logits(tok):
        batch = {"tokens": tok, "position_ids": positions, "labels": None, "attention_mask": mask}
        with torch.no_grad():
            return gpt_forward(model, batch)

    changed = tokens.clone()
    changed[0, :10] = (changed[0, :10] + 1) % 128  # rewrite the whole first document
    before, after = logits(tokens), logits(changed)
    assert torch.allclose(before[:, 10:], after[:, 10:], atol=1e-5)  # the second document never saw it
    assert not torch.allclose(before[:, :10], after[:, :10])
