"""StableMoE: stage-1 routing and losses by hand, distillation on a toy problem, frozen stage 2."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.moe.routers.stablemoe import StableMoERouter
from tests.tiny import VOCAB, tiny_run

STAGE1, STAGE2 = RoutingState(0, "stage1"), RoutingState(10, "stage2")


def _router(*flags):
    router = StableMoERouter(tiny_run("--moe-router-type", "stablemoe", *flags).model)
    router.set_routing_state(STAGE1)
    torch.manual_seed(0)
    router.weight.data.normal_(0.0, 1.0)
    return router


def _batch(seed, num_tokens=64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num_tokens, 32, generator=gen), torch.randint(0, VOCAB, (num_tokens,), generator=gen)


def test_stage1_routes_by_centroids_with_sigmoid_gate_and_the_paper_losses(megatron_world_of_one):
    router = _router()
    hidden, ids = _batch(0)
    decision = router(hidden, ids)
    s = (hidden.double() @ router.weight.detach().double().t()).numpy()
    a = s.argmax(1)
    gate = 1 / (1 + np.exp(-s[np.arange(64), a]))
    assert decision.routing_map.float().argmax(1).tolist() == a.tolist()
    np.testing.assert_allclose(decision.probs.detach().numpy()[np.arange(64), a], gate, rtol=1e-5)
    counts, mean = np.bincount(a, minlength=4), 64 / 4
    gate_sum = np.array([gate[a == i].sum() for i in range(4)])
    balance = 0.3 * np.sum((counts - mean) / mean * gate_sum) / 64  # eq. 4, per token
    distilled = (router.distilled.embedding.detach()[ids].double() @ router.distilled.centroids.detach().double().t())
    distill = 0.3 * F.cross_entropy(distilled, torch.from_numpy(a)).item()  # eq. 6, mean over tokens
    assert decision.logged_losses["balance"].item() == pytest.approx(balance, rel=1e-5)
    assert decision.logged_losses["distill"].item() == pytest.approx(distill, rel=1e-5)
    assert decision.aux_loss.item() == pytest.approx(balance + distill, rel=1e-5)


def test_distillation_trains_only_the_distilled_router(megatron_world_of_one):
    router = _router("--moe-aux-loss-coeff", "0")  # aux loss = distillation only
    hidden, ids = _batch(1)
    hidden.requires_grad_(True)
    router(hidden, ids).aux_loss.backward()
    assert router.distilled.embedding.grad.abs().sum() > 0 and router.distilled.centroids.grad.abs().sum() > 0
    # The target a_t carries no gradient (a zero balance coefficient leaves the balance term out).
    assert router.weight.grad is None and (hidden.grad is None or not hidden.grad.any())


def test_distilled_router_learns_the_stage1_assignment_on_a_toy_problem(megatron_world_of_one):
    router = _router("--moe-aux-loss-coeff", "0")
    token_features = torch.randn(VOCAB, 32, generator=torch.Generator().manual_seed(2))
    target = (token_features @ router.weight.detach().t()).argmax(1)  # stage-1 choice per token id
    optimizer = torch.optim.Adam(router.distilled.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(3)
    for _ in range(150):
        ids = torch.randint(0, VOCAB, (256,), generator=gen)
        optimizer.zero_grad()
        router(token_features[ids], ids).aux_loss.backward()
        optimizer.step()
    router.set_routing_state(STAGE2)  # freezes: the distilled choice of every token id
    assert (router.frozen_table == target).float().mean() > 0.95


def test_stage2_routing_is_frozen_and_the_distilled_router_gets_no_gradient(megatron_world_of_one):
    router = _router()
    router.set_routing_state(STAGE2)
    table = router.frozen_table.clone()
    assert router.is_frozen() and torch.equal(table, router.distilled.vocabulary_choice())
    hidden, ids = _batch(4)
    decision = router(hidden, ids)
    assert decision.routing_map.float().argmax(1).tolist() == table[ids].tolist()
    assert decision.aux_loss is None and decision.logged_losses == {}
    (decision.probs * torch.randn(64, 4)).sum().backward()
    assert router.distilled.embedding.grad is None and router.distilled.centroids.grad is None
    assert router.weight.grad.abs().sum() > 0  # the centroids still learn through sigmoid(s)
    # Whatever happens to the parameters or the hidden states, a token keeps its expert.
    with torch.no_grad():
        for param in router.parameters():
            param.add_(torch.randn_like(param))
    router.set_routing_state(STAGE2)
    again = router(torch.randn(64, 32) * 3, ids)
    assert torch.equal(again.routing_map, decision.routing_map) and torch.equal(router.frozen_table, table)


def test_frozen_table_travels_with_the_state_dict(megatron_world_of_one):
    router = _router()
    router.set_routing_state(STAGE2)
    assert "frozen_table" in router.state_dict()
    resumed = _router()
    resumed.distilled.embedding.data.normal_()  # different parameters: the table must win
    resumed.load_state_dict(router.state_dict())
    resumed.distilled.embedding.data.normal_()
    resumed.set_routing_state(STAGE2)
    assert torch.equal(resumed.frozen_table, router.frozen_table)


def test_evaluation_before_the_freeze_routes_with_the_distilled_router(megatron_world_of_one):
    """Reference (Hunter-DDM/stablemoe, BaseLayer.forward): not training -> distilled affinities."""
    router = _router()
    hidden, ids = _batch(5)
    router.eval()
    decision = router(hidden, ids)
    distilled = router.distilled.embedding.detach()[ids].double() @ router.distilled.centroids.detach().double().t()
    assert decision.routing_map.float().argmax(1).tolist() == distilled.argmax(1).tolist()
    greedy = (hidden.double() @ router.weight.detach().double().t()).argmax(1)
    assert decision.routing_map.float().argmax(1).tolist() != greedy.tolist()  # not the backbone's choice
    s = (hidden.double() @ router.weight.detach().double().t()).numpy()
    chosen = distilled.argmax(1).numpy()
    gate = 1 / (1 + np.exp(-s[np.arange(64), chosen]))  # still scaled by the backbone centroids
    np.testing.assert_allclose(decision.probs.detach().numpy()[np.arange(64), chosen], gate, rtol=1e-5)
    assert not router.is_frozen()  # evaluating does not freeze


def test_initialisation_is_the_reference_one(megatron_world_of_one):
    """Backbone and distilled centroids: orthogonal, gain 0.1 (rows of norm 0.1, mutually orthogonal);
    word embedding: torch.nn.Embedding's N(0, 1). Also after the model's layout-independent init."""
    from megatron_evomoe.models.gpt import build_gpt_model
    from megatron_evomoe.moe.evolution import moe_layers

    model = build_gpt_model(tiny_run("--moe-router-type", "stablemoe").model)
    for router in (StableMoERouter(tiny_run("--moe-router-type", "stablemoe").model), moe_layers([model])[0].router):
        for centroids in (router.weight.detach(), router.distilled.centroids.detach()):
            gram = centroids.double() @ centroids.double().t()
            np.testing.assert_allclose(gram.numpy(), 0.01 * np.eye(4), atol=1e-6)
        embedding = router.distilled.embedding.detach()
        assert embedding.std().item() == pytest.approx(1.0, abs=0.05) and abs(embedding.mean().item()) < 0.05
