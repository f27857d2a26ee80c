"""--moe-router-load-balancing-type against hand computations (moe/load_balancing.py).

aux_loss is the loss the routers computed before the flag existed; seq_aux_loss averages per-sequence
losses; global_aux_loss, on two data-parallel ranks with two micro-batches each, equals the balance
loss of the concatenated batch (and its gradient, averaged over the ranks as data parallelism does,
equals that loss's gradient); none leaves the gate without a balance loss.
"""

import json

import numpy as np
import pytest
import torch

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.routers import router_class
from tests.distributed import run_ranks
from tests.moe import balance_ranks
from tests.moe.balance_ranks import DTS_STATE, NUM_MICROBATCHES, ROUTERS, gate_weight, rank_inputs
from tests.tiny import VOCAB, tiny_run, train_logged

COEFF = {"switch": 0.01, "gshard": 0.01, "dts": 0.1, "stablemoe": 0.3}  # each router's default alpha


def hand_gate_and_counted(name: str, hidden: torch.Tensor, weight: torch.Tensor):
    """Float64 (gate values the loss pushes ``[T, E]``, counted pairs ``[T, E]``) written from the papers."""
    logits = hidden.double() @ weight.t()
    num_experts = logits.shape[1]
    if name == "stablemoe":  # eq. 4: sigmoid of the assigned expert's score, A_i = argmax choices
        counted = torch.nn.functional.one_hot(logits.argmax(1), num_experts).double()
        return torch.sigmoid(logits) * counted, counted
    if name == "dts":  # eq. 10: g' at tau, count_i = tokens with g'_i > c
        gate = torch.softmax(logits / DTS_STATE.temperature, dim=1)
        return gate, (gate > 0.001).double()
    gate = torch.softmax(logits, dim=1)  # Switch: top-1; GShard: first choices
    return gate, torch.nn.functional.one_hot(gate.argmax(1), num_experts).double()


def hand_balance_loss(name: str, gates: list, counted: list) -> torch.Tensor:
    """The router's balance loss with gate means over ``gates`` and counts over ``counted`` (lists of
    ``[T, E]`` pieces, concatenated)."""
    gate, count_map = torch.cat(gates), torch.cat(counted)
    counts, n = count_map.sum(0), count_map.shape[0]
    mean_gate = gate.sum(0) / gate.shape[0]
    num_experts = gate.shape[1]
    if name == "stablemoe":
        load = n / num_experts
        return COEFF[name] * torch.sum((counts - load) / load * mean_gate)
    return COEFF[name] * num_experts * torch.sum(counts / n * mean_gate)


@pytest.fixture(scope="module")
def two_ranks():
    return run_ranks(balance_ranks.balance_losses_on_two_ranks, 2)


@pytest.mark.parametrize("name", ROUTERS)
def test_global_aux_loss_is_the_loss_of_the_concatenated_batch(two_ranks, name):
    weight = gate_weight(name).double().requires_grad_(True)
    pieces = {(r, m): hand_gate_and_counted(name, rank_inputs(r, m)[0], weight)
              for r in range(2) for m in range(NUM_MICROBATCHES)}
    for m in range(NUM_MICROBATCHES):
        # Micro-batch m: counts over every rank's micro-batches 0..m (the last: the whole global
        # batch), gate means over micro-batch m of both ranks.
        expected = hand_balance_loss(
            name, [pieces[r, m][0] for r in range(2)], [pieces[r, k][1] for r in range(2) for k in range(m + 1)]
        )
        (grad,) = torch.autograd.grad(expected, weight)
        ranks = [result[name] for result in two_ranks]
        mean_loss = np.mean([rank["losses"][m] for rank in ranks])
        assert mean_loss == pytest.approx(expected.item(), rel=1e-5)
        mean_grad = sum(rank["grads"][m] for rank in ranks).double() / 2  # the data-parallel average
        torch.testing.assert_close(mean_grad, grad, rtol=1e-4, atol=1e-5 * grad.abs().max().item())
    for rank in (result[name] for result in two_ranks):
        assert rank["no_grad_losses"] == rank["losses"]  # a pass without autograd counts nothing
        assert rank["after_reset"] == rank["losses"][0]  # the per-step reset forgets the step


@pytest.mark.parametrize("name", ROUTERS)
def test_aux_loss_on_two_ranks_is_each_ranks_own_micro_batch(two_ranks, name):
    for r, result in enumerate(two_ranks):
        gate, counted = hand_gate_and_counted(name, rank_inputs(r, 0)[0], gate_weight(name).double())
        assert result[name]["aux_loss"] == pytest.approx(hand_balance_loss(name, [gate], [counted]).item(), rel=1e-5)


@pytest.mark.parametrize("name", ROUTERS)
def test_sequence_parallel_terms_add_up_to_the_whole_sequences_loss(two_ranks, name):
    # TP = 2 with --sequence-parallel: each rank routes half of the sequence positions.
    weight = gate_weight(name).double()
    hidden = rank_inputs(0, 0)[0]
    gate, counted = hand_gate_and_counted(name, hidden, weight)
    b = balance_ranks.SP_SEQUENCES
    expected = {
        "aux_loss": hand_balance_loss(name, [gate], [counted]).item(),
        "global_aux_loss": hand_balance_loss(name, [gate], [counted]).item(),  # DP = 1, one micro-batch
        "seq_aux_loss": np.mean([hand_balance_loss(name, [gate[j::b]], [counted[j::b]]).item() for j in range(b)]),
        "z": 1e-2 * torch.logsumexp(hidden.double() @ weight.t(), dim=1).square().mean().item(),
    }
    for key, value in expected.items():
        terms = [result["tp2_sp"][name, key] for result in two_ranks]
        assert sum(terms) == pytest.approx(value, rel=1e-5), key


def _router(name, *flags):
    router = router_class(name)(tiny_run("--moe-router-type", name, *flags).model)
    router.set_layer_number(1)
    router.weight.data.copy_(gate_weight(name))
    if name == "dts":
        router.set_routing_state(DTS_STATE)
    return router


@pytest.mark.parametrize("name", ["switch", "gshard", "dts"])
def test_aux_loss_is_the_loss_computed_before_the_flag(name, megatron_world_of_one):
    router = _router(name)  # the default type
    torch.manual_seed(0)  # DTS's gumbel draw
    decision = router(torch.randn(48, 32), None)
    counted = decision.routing_map
    if name == "gshard":  # first choices only
        counted = torch.nn.functional.one_hot(decision.gate.argmax(1), 4).bool()
    # The expression of moe/balance.py before --moe-router-load-balancing-type, written out.
    probs_sum, counts, num_tokens = decision.gate.sum(0), counted.sum(0).float(), torch.tensor(48.0)
    before = COEFF[name] * 4 * torch.sum(counts.to(probs_sum.dtype) / num_tokens * probs_sum / num_tokens)
    assert torch.equal(decision.aux_loss, before)


@pytest.mark.parametrize("name", ["switch", "stablemoe"])
def test_seq_aux_loss_averages_the_losses_of_the_sequences(name, megatron_world_of_one):
    router = _router(name, "--moe-router-load-balancing-type", "seq_aux_loss")
    router.num_sequences = 3  # tokens [s=8, b=3] flattened: token t is in sequence t % 3
    hidden, ids = torch.randn(24, 32), torch.randint(0, VOCAB, (24,))
    gate, counted = hand_gate_and_counted(name, hidden, gate_weight(name).double())
    per_sequence = [hand_balance_loss(name, [gate[b::3]], [counted[b::3]]).item() for b in range(3)]
    assert router(hidden, ids).logged_losses["balance"].item() == pytest.approx(np.mean(per_sequence), rel=1e-5)


def test_none_leaves_the_gate_without_a_balance_loss(megatron_world_of_one):
    router = _router("switch", "--moe-router-load-balancing-type", "none")
    decision = router(torch.randn(48, 32), None)
    assert decision.aux_loss is None and decision.logged_losses == {}
    assert router_class("switch").loss_names(router.config) == ()
    z_only = _router("switch", "--moe-router-load-balancing-type", "none", "--moe-z-loss-coeff", "1e-2")
    decision = z_only(torch.randn(48, 32), None)
    assert list(decision.logged_losses) == ["z"] and torch.equal(decision.aux_loss, decision.logged_losses["z"])


def test_flag_defaults_and_routers_without_a_balance_loss():
    model = tiny_run().model
    assert (model.moe_router.load_balancing_type, model.moe_router.z_loss_coeff) == ("aux_loss", None)
    assert model.moe_router_load_balancing_type == "aux_loss"  # megatron's field, read by finalize_model_grads
    model = tiny_run("--moe-router-type", "stablemoe", "--moe-router-load-balancing-type", "global_aux_loss").model
    assert model.moe_router_load_balancing_type == "global_aux_loss"
    for name in ("base", "hash", "dselectk"):
        assert tiny_run("--moe-router-type", name, "--moe-router-load-balancing-type", "none").model
        with pytest.raises(InputError, match=r"^--moe-router-load-balancing-type seq_aux_loss: this router has no "
                                             r"balance loss \(it takes only aux_loss or none\)$"):
            tiny_run("--moe-router-type", name, "--moe-router-load-balancing-type", "seq_aux_loss")


def _train_log(tmp_path, tag, *flags):
    return train_logged("--train-iters", "2", "--eval-iters", "0", *flags, log=str(tmp_path / f"{tag}.jsonl"))


@pytest.mark.slow
def test_recomputation_counts_each_micro_batch_once(tmp_path, megatron_world_of_one):
    """Two micro-batches per step: a router run again in backward (moe_aware; megatron's full
    recomputation) must not add its micro-batch to the global counts a second time."""
    flags = ("--moe-router-load-balancing-type", "global_aux_loss", "--moe-z-loss-coeff", "1e-3")
    plain = _train_log(tmp_path, "plain", *flags)
    for tag, extra in {
        "moe_aware": ("--moe-recompute", "moe_aware"),
        "full": ("--recompute-granularity", "full"),
    }.items():
        recomputed = _train_log(tmp_path, tag, *flags, *extra)
        for key in ("lm_loss", "grad_norm", "balance_loss", "z_loss"):
            flat = [np.ravel(r[key]) for r in recomputed], [np.ravel(r[key]) for r in plain]
            np.testing.assert_allclose(*flat, rtol=1e-6, err_msg=f"{tag} {key}")
