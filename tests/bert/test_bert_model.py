"""BERT-MoE model pieces: MLM accuracy, routing token ids, padding, the loss, the GLUE classifier."""

import pytest
import torch

import megatron_evomoe.moe.layer as moe_layer_module
from megatron_evomoe.models.bert import MLMOutput, build_bert_model, mlm_loss, vocab_parallel_correct
from megatron_evomoe.models.bert_classifier import HEAD_PREFIX, build_bert_classifier
from tests.tiny import VOCAB, tiny_run

B, S = 3, 16


@pytest.fixture(scope="module")
def config(megatron_world_of_one):
    return tiny_run("--seq-length", str(S)).model


def _batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(5, VOCAB, (B, S), generator=gen)
    attention = torch.ones(B, S, dtype=torch.long)
    attention[1, 10:] = 0
    attention[2, 6:] = 0
    labels = torch.randint(0, VOCAB, (B, S), generator=gen)
    return tokens, attention, labels


def test_mlm_accuracy_is_argmax_agreement(megatron_world_of_one):
    logits = torch.randn(S, B, VOCAB)
    labels = torch.randint(0, VOCAB, (B, S))
    labels[0, :4] = logits[:4, 0].argmax(-1)  # some correct predictions
    expected = (logits.argmax(-1).transpose(0, 1) == labels).float()
    assert torch.equal(vocab_parallel_correct(logits, labels), expected)
    assert expected.sum() >= 4


def test_token_ids_reach_every_moe_layer_and_padding_is_inert(megatron_world_of_one, monkeypatch):
    model = build_bert_model(tiny_run("--seq-length", str(S), "--moe-router-type", "hash").model)  # routes by id
    seen = []
    original = moe_layer_module.routing_token_ids

    def spy(token_ids, seq_batch, group):
        seen.append(original(token_ids, seq_batch, group))
        return seen[-1]

    monkeypatch.setattr(moe_layer_module, "routing_token_ids", spy)
    tokens, attention, labels = _batch()
    out = model(tokens, attention, lm_labels=labels)
    assert len(seen) == 2  # the tiny model's MoE layers (1 and 3)
    for ids in seen:
        assert torch.equal(ids, tokens.transpose(0, 1).reshape(-1))  # [s*b], the layer's token order
    # Other tokens at padded positions change nothing at real positions.
    noisy = torch.where(attention.bool(), tokens, torch.randint(5, VOCAB, tokens.shape))
    out_noisy = model(noisy, attention, lm_labels=labels)
    real = attention.bool()
    torch.testing.assert_close(out.lm_loss[real], out_noisy.lm_loss[real])
    assert torch.isfinite(out.lm_loss).all()


def test_mlm_loss_with_binary_head():
    lm_loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 0, 1], [0, 1, 0]])
    binary = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    output = MLMOutput(lm_loss, torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), binary)
    total, count, reported = mlm_loss(output, mask, torch.tensor([0, 0]))
    sop = torch.nn.functional.cross_entropy(binary, torch.tensor([0, 0]))
    assert int(count) == 3
    # megatron divides by the count: the objective is mean MLM loss + mean SOP loss
    assert float(total) / 3 == pytest.approx((1 + 3 + 5) / 3 + float(sop))
    assert reported["mlm accuracy"].tolist() == [2.0, 3.0]
    assert reported["sop accuracy"].tolist() == [1.0, 2.0]


def test_classifier_head_freezing_and_backbone_view(config):
    model = build_bert_classifier(config, num_outputs=3)
    tokens, attention, _ = _batch(1)
    logits = model(tokens, attention)
    assert logits.shape == (B, 3)
    logits.sum().backward()
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all(n.startswith(("lm_head.", "output_layer.")) for n in frozen)
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
    assert model.classification_head.projection.weight.grad is not None
    keys = model.sharded_state_dict().keys()
    assert any(k.startswith(HEAD_PREFIX) for k in keys)
    with model.without_head():
        hidden = model.sharded_state_dict().keys()
    assert not any(k.startswith(HEAD_PREFIX) for k in hidden)
    assert set(hidden) == {k for k in keys if not k.startswith(HEAD_PREFIX)}
    # the encoder's keys are those of the pretraining model (checkpoints load across the two)
    assert set(build_bert_model(config).sharded_state_dict().keys()) == set(hidden)
