"""BASE router: balanced training assignment, greedy inference, sigmoid gate; EP/TP group = one rank."""

import pytest
import torch

from megatron_evomoe.moe.routers.base import BaseRouter
from tests.distributed import run_ranks
from tests.moe.routers.oracles import optimum
from tests.moe.routers.router_ranks import base_assignment_per_layout
from tests.tiny import tiny_run


def _total(scores: torch.Tensor, routing_map: torch.Tensor) -> float:
    return float(scores.double()[routing_map].sum())


def _assert_optimal(scores: torch.Tensor, routing_map: torch.Tensor, epsilon: float = 1e-4) -> None:
    """Balanced and within the auction's bound T * eps * (score range) of scipy's optimum."""
    bound = scores.shape[0] * epsilon * float(scores.max() - scores.min())
    best = optimum(scores)
    assert best - bound <= _total(scores, routing_map) <= best + 1e-9


def _router():
    router = BaseRouter(tiny_run("--moe-router-type", "base").model)
    torch.manual_seed(0)
    router.weight.data.normal_(0.0, 1.0)
    return router


def test_training_is_balanced_optimal_and_gated_by_the_sigmoid_of_the_score(megatron_world_of_one):
    router = _router()
    hidden = torch.randn(64, 32, requires_grad=True)
    decision = router(hidden, None)
    scores = hidden.detach() @ router.weight.detach().t()
    expert = decision.routing_map.float().argmax(1)
    assert decision.routing_map.sum(1).tolist() == [1] * 64
    assert torch.bincount(expert, minlength=4).tolist() == [16] * 4
    assert decision.aux_loss is None and decision.logged_losses == {}
    _assert_optimal(scores, decision.routing_map)
    assert _total(scores, decision.routing_map) == pytest.approx(optimum(scores), rel=1e-9)  # exact here
    assert torch.allclose(decision.probs[decision.routing_map], torch.sigmoid(scores[decision.routing_map]))
    decision.probs.sum().backward()  # the gate is how the expert embeddings learn
    assert router.weight.grad.abs().sum(1).gt(0).all() and hidden.grad.abs().sum() > 0


def test_inference_is_greedy_top1(megatron_world_of_one):
    router = _router()
    hidden = torch.randn(64, 32)
    hidden[:, :] += router.weight.detach()[0]  # skew towards expert 0: greedy is unbalanced
    router.eval()
    decision = router(hidden, None)
    scores = hidden @ router.weight.detach().t()
    assert decision.routing_map.float().argmax(1).tolist() == scores.argmax(1).tolist()
    assert torch.bincount(scores.argmax(1), minlength=4).max() > 16


def test_expert_and_sequence_parallel_groups_assign_like_one_rank_over_all_their_tokens():
    per_rank = run_ranks(base_assignment_per_layout, 2, 24)
    for layout in ("ep2", "tp2_sp"):
        (scores0, map0, group_rank0), (scores1, map1, group_rank1) = (r[layout] for r in per_rank)
        assert (group_rank0, group_rank1) == (0, 1)
        scores, routing_map = torch.cat([scores0, scores1]), torch.cat([map0, map1])
        _assert_optimal(scores, routing_map)  # optimal over all 48 tokens of the group
        distributed = routing_map.float().argmax(1)
        assert torch.bincount(distributed, minlength=4).tolist() == [12] * 4
        # Balanced over the group, not per rank: each rank alone would get 6 per expert.
        assert torch.bincount(map0.float().argmax(1), minlength=4).tolist() != [6] * 4
