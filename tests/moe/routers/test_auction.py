"""The BASE auction: exact balance, and optimality against scipy's linear_sum_assignment (oracle)."""

import pytest
import torch

from megatron_evomoe.moe.auction import assignment_score, balanced_assignment
from tests.moe.routers.oracles import optimum


@pytest.mark.parametrize("num_tokens,num_experts", [(64, 4), (96, 8), (200, 5), (512, 16)])
def test_every_expert_gets_exactly_its_share(num_tokens, num_experts):
    scores = torch.randn(num_tokens, num_experts, generator=torch.Generator().manual_seed(num_tokens))
    expert = balanced_assignment(scores)
    counts = torch.bincount(expert, minlength=num_experts)
    assert counts.tolist() == [num_tokens // num_experts] * num_experts


def test_total_score_equals_the_optimum_on_small_cases():
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        num_tokens = int(torch.randint(2, 25, (), generator=gen))
        num_experts = int(torch.randint(2, 6, (), generator=gen))
        scores = torch.randn(num_tokens, num_experts, generator=gen, dtype=torch.float64)
        expert = balanced_assignment(scores, epsilon=1e-9)
        counts = torch.bincount(expert, minlength=num_experts)
        assert counts.max() <= -(-num_tokens // num_experts)  # balanced also when E does not divide T
        assert assignment_score(scores, expert) == pytest.approx(optimum(scores), abs=1e-7)


def test_default_epsilon_is_within_its_bound_and_beats_greedy_when_greedy_is_unbalanced():
    scores = torch.randn(128, 4, generator=torch.Generator().manual_seed(1))
    scores[:, 0] += 1.0  # most tokens prefer expert 0
    epsilon = 1e-4
    expert = balanced_assignment(scores, epsilon=epsilon)
    bound = 128 * epsilon * float(scores.max() - scores.min())
    assert assignment_score(scores, expert) >= optimum(scores) - bound
    assert torch.bincount(scores.argmax(1), minlength=4).max() > 32
    assert torch.bincount(expert, minlength=4).tolist() == [32] * 4


def test_degenerate_inputs():
    assert torch.bincount(balanced_assignment(torch.zeros(12, 3))).tolist() == [4, 4, 4]  # all ties
    assert balanced_assignment(torch.randn(5, 1)).tolist() == [0] * 5
    # Round cap hit: the greedy completion still respects the capacities.
    duplicates = torch.randn(4, 8, generator=torch.Generator().manual_seed(2)).repeat(16, 1)
    expert = balanced_assignment(duplicates, max_rounds=2)
    assert torch.bincount(expert, minlength=8).tolist() == [8] * 8
