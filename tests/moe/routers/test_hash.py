"""Hash router: routing is a fixed function of the token id; the balanced table spreads frequent tokens."""

import pytest
import torch

from megatron_evomoe.moe.routers.hash import HashRouter, balanced_hash_table, random_hash_table
from tests.tiny import VOCAB, tiny_run


def _router(*flags, layer=1):
    router = HashRouter(tiny_run("--moe-router-type", "hash", *flags).model)
    router.set_layer_number(layer)
    return router


def test_same_token_same_expert_whatever_its_position_batch_or_hidden_state(megatron_world_of_one):
    router = _router()
    ids = torch.randint(0, VOCAB, (64,), generator=torch.Generator().manual_seed(0))
    first = router(torch.randn(64, 32), ids)
    other_ids = torch.cat([ids.flip(0)[:40], torch.randint(0, VOCAB, (24,))])  # other batch and positions
    second = router(torch.randn(64, 32) * 5, other_ids)
    expert_of = {}
    for batch_ids, decision in ((ids, first), (other_ids, second)):
        assert decision.routing_map.sum(1).tolist() == [1] * 64
        assert decision.probs[decision.routing_map].tolist() == [1.0] * 64  # no gate: weight 1
        for token, expert in zip(batch_ids.tolist(), decision.routing_map.float().argmax(1).tolist()):
            assert expert_of.setdefault(token, expert) == expert
    assert decision.aux_loss is None
    with pytest.raises(ValueError, match="token ids"):
        router(torch.randn(4, 32), None)


def test_random_tables_are_reproducible_and_differ_between_layers(megatron_world_of_one):
    assert torch.equal(_router(layer=1).table, _router(layer=1).table)
    assert not torch.equal(_router(layer=1).table, _router(layer=3).table)
    table = random_hash_table(10000, 4, seed=3)
    assert torch.bincount(table, minlength=4).min() > 2300  # uniform


def test_balanced_hash_spreads_frequent_tokens():
    vocab, num_experts = 1000, 8
    counts = (10000.0 / torch.arange(1, vocab + 1).double() ** 0.8).long()  # Zipf-like
    counts[900:] = 0  # never seen in the training data
    table = balanced_hash_table(counts, num_experts)
    assert sorted(table[:num_experts].tolist()) == list(range(num_experts))  # top tokens all apart
    load = torch.bincount(table, weights=counts.double(), minlength=num_experts)
    assert load.max() / load.mean() < 1.01
    random_load = torch.bincount(random_hash_table(vocab, num_experts, 0), weights=counts.double())
    assert random_load.max() / random_load.mean() > 1.1
    # Unseen tokens are water-filled onto the experts with the fewest distinct tokens.
    distinct = torch.bincount(table, minlength=num_experts)
    receivers = torch.bincount(table[900:], minlength=num_experts) > 0
    assert receivers.sum() > 1 and distinct.min() >= distinct[receivers].max() - 1


def greedy_table_by_hand(counts: list, num_experts: int) -> list:
    """The documented rule written out plainly: most frequent token first (ties: lower id) to the
    expert with the least load (ties: fewer tokens, then lower index); unseen tokens one by one to
    the expert with the fewest tokens (ties: lower index)."""
    load, size, table = [0] * num_experts, [0] * num_experts, [None] * len(counts)
    for token in sorted(range(len(counts)), key=lambda t: (-counts[t], t)):
        if counts[token] <= 0:
            continue
        expert = min(range(num_experts), key=lambda e: (load[e], size[e], e))
        table[token] = expert
        load[expert] += counts[token]
        size[expert] += 1
    for token in range(len(counts)):
        if counts[token] <= 0:
            expert = min(range(num_experts), key=lambda e: (size[e], e))
            table[token] = expert
            size[expert] += 1
    return table


def test_balanced_router_is_built_from_counts_and_restored_from_its_state(megatron_world_of_one):
    router = _router("--hash-type", "balanced")
    assert router.NEEDS_TOKEN_COUNTS and not router.is_prepared()
    with pytest.raises(RuntimeError, match="never built"):
        router(torch.randn(4, 32), torch.tensor([1, 2, 3, 4]))
    counts = torch.randint(0, 100, (VOCAB,), generator=torch.Generator().manual_seed(1))
    counts[::7] = 0  # some tokens never seen
    router.prepare_from_data(counts)
    assert router.is_prepared() and router.table.tolist() == greedy_table_by_hand(counts.tolist(), 4)
    assert "table" in router.state_dict()  # a persistent buffer: part of every checkpoint
    resumed = _router("--hash-type", "balanced")
    resumed.load_state_dict(router.state_dict())
    assert resumed.is_prepared() and torch.equal(resumed.table, router.table)
