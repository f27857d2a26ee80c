"""--log-moe-diagnostics: each diagnostic against an oracle, an unchanged trajectory, and EP2 / TP2."""

import itertools
import math

import numpy as np
import pytest
import torch

from megatron_evomoe.moe.diversify import expert_weights
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.training.loop import setup_session
from megatron_evomoe.training.moe_diagnostics import (
    MoEDiagnostics, TransitionLossJumps, expert_similarity, mean_pairwise_cosine, routing_fluctuation,
)
from megatron_evomoe.training.routing_probe import ProbeResult, gate_entropy_and_margin
from tests.distributed import run_ranks
from tests.tiny import tiny_gpt_task, tiny_run
from tests.moe.evomoe_ranks import spawned_experts_and_similarity
from tests.training.layouts import logged_records

DTS = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "2"]


def cosine_oracle(vectors) -> float:
    """Mean over pairs of a.b / (|a| |b|), in float64 numpy, one pair at a time."""
    vectors = [np.asarray(v, dtype=np.float64).ravel() for v in vectors]
    pairs = list(itertools.combinations(vectors, 2))
    return sum(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in pairs) / len(pairs)


# ------------------------------------------------------------------------------ expert similarity
def test_similarity_of_hand_made_experts(megatron_world_of_one):
    """v0 = u, v1 = 2u, v2 = -u, v3 = w with u = (fc1 A, fc2 0), w = (fc1 0, fc2 B) orthogonal:
    pair cosines 1, -1, 0, -1, 0, 0, mean -1/6."""
    run = tiny_run(*DTS)
    session = setup_session(run, tiny_gpt_task())
    gen = torch.Generator().manual_seed(0)
    for layer in moe_layers(session.model):
        shape1, shape2 = (w.shape for w in expert_weights(layer.experts, 0))
        a, b = torch.randn(shape1, generator=gen), torch.randn(shape2, generator=gen)
        hand = [(a, 0 * b), (2 * a, 0 * b), (-a, 0 * b), (0 * a, b)]
        with torch.no_grad():
            for local, (fc1, fc2) in enumerate(hand):
                w1, w2 = expert_weights(layer.experts, local)
                w1.copy_(fc1)
                w2.copy_(fc2)
    assert expert_similarity(session.model, run.model) == pytest.approx([-1 / 6, -1 / 6], abs=1e-6)
    assert mean_pairwise_cosine(torch.tensor([[4.0, 2.0], [2.0, 4.0]])) == pytest.approx(0.5)
    assert math.isnan(mean_pairwise_cosine(torch.tensor([[1.0]])))


@pytest.mark.parametrize("layout", [["--expert-model-parallel-size", "2"],
                                    ["--tensor-model-parallel-size", "2", "--sequence-parallel"]])
def test_similarity_gathers_experts_over_ranks_and_shards(layout):
    """EP2 (two experts per rank) and TP2 (every expert split in two): the logged value equals the
    cosine oracle on the experts put back together from every rank's pieces."""
    results = run_ranks(spawned_experts_and_similarity, 2, DTS + ["--evomoe-mask-ratio", "0.5"] + layout)
    pieces = {}
    for _, shards in results:
        for key, weights in shards.items():
            pieces.setdefault(key, []).extend(w.flatten() for w in weights)
    for layer_index, layer_number in enumerate(sorted({layer for layer, _ in pieces})):
        experts = [torch.cat(pieces[(layer_number, e)]).numpy() for e in range(4)]
        expected = cosine_oracle(experts)
        assert 0.4 < expected < 0.6  # spawned at mask ratio 0.5: about 1 - r
        for similarity, _ in results:
            assert similarity[layer_index] == pytest.approx(expected, abs=1e-6)


# --------------------------------------------------------------------------- gate, fluctuation
def test_entropy_and_margin_of_known_gates():
    gates = torch.tensor([
        [0.5, 0.25, 0.25, 0.0],  # H = 0.5 ln 2 + 2 x 0.25 ln 4 = 1.5 ln 2; margin 0.25
        [0.25, 0.25, 0.25, 0.25],  # uniform: ln 4, margin 0
        [0.0, 1.0, 0.0, 0.0],  # one-hot: 0, margin 1
        [0.4, 0.4, 0.0, 0.0],  # weights summing to 0.8 (DSelect-k, non-power-of-2): as [0.5, 0.5]
    ])
    entropy, margin = gate_entropy_and_margin(gates).tolist()
    assert entropy == pytest.approx([1.5 * math.log(2), math.log(4), 0.0, math.log(2)], abs=1e-6)
    assert margin == pytest.approx([0.25, 0.0, 1.0, 0.0], abs=1e-6)


class _Phases:
    """A controller stand-in: the phase of each iteration from a list; records pushed states."""

    def __init__(self, phases):
        self.phases = phases
        self.applied = []

    def routing_state(self, iteration):
        return RoutingState(iteration=iteration, phase=self.phases[iteration])

    def apply_state(self, model_chunks, state):
        self.applied.append(state.iteration)


def _probe(experts):
    nan = [[float("nan")] * len(experts[0])] * len(experts)
    return ProbeResult(list(range(len(experts[0]))), experts, [[1] * len(experts[0])] * len(experts), nan, nan)


def test_fluctuation_over_a_hand_made_sequence_of_top1_choices():
    assert routing_fluctuation([0, 1, 2, -1, 3], [0, 2, 2, 1, -1]) == pytest.approx(1 / 3)  # (1 -> 2) of 3 routed
    assert routing_fluctuation([-1, -1], [0, 1]) is None
    diagnostics = MoEDiagnostics(None, _Phases(["expert_diversify"] * 4))  # no similarity in that phase
    sequence = [[[0, 0, 1, 1], [2, 2, 2, 2]],
                [[0, 1, 1, 1], [2, 2, 2, 2]],
                [[1, 0, 0, 1], [3, 3, 2, -1]]]
    logged = [diagnostics.log_entries(None, 1, _probe(experts)) for experts in sequence]
    assert "routing_fluctuation" not in logged[0]  # nothing to compare with at the first log
    assert logged[1]["routing_fluctuation"] == [0.25, 0.0]
    assert logged[2]["routing_fluctuation"] == [0.75, pytest.approx(2 / 3)]  # vs the previous log, not the first
    assert all("gate_entropy" not in entry for entry in logged)  # no gate distribution: absent


def test_loss_jumps_from_a_known_loss_sequence():
    """T_S = 3, T_D = 5. Validation losses come from a list in call order: before / after T_S,
    before / after T_D; training losses per step."""
    phases = ["expert_diversify"] * 3 + ["gate_sparsify"] * 2 + ["top1"] * 3
    controller = _Phases(phases)
    validation = iter([2.0, 2.5, 1.8, 1.7])
    jumps = TransitionLossJumps(controller, lambda: next(validation))
    train = [3.0, 2.9, 2.8, 3.4, 2.6, 2.65, 2.5, 2.4]
    taken = {}
    for iteration, loss in enumerate(train):
        jumps.before_transition(iteration, None)
        jumps.after_transition(iteration)
        jumps.observe(iteration, loss)
        taken.update(jumps.take())
    assert taken["T_S"] == {
        "iteration": 3, "from": "expert_diversify", "to": "gate_sparsify",
        "eval_loss_before": 2.0, "eval_loss_after": 2.5, "eval_loss_jump": 0.5,
        "train_loss_before": 2.8, "train_loss_after": 3.4, "train_loss_jump": pytest.approx(0.6),
    }
    assert taken["T_D"]["eval_loss_jump"] == pytest.approx(-0.1)
    assert taken["T_D"]["train_loss_jump"] == pytest.approx(0.05)
    assert controller.applied == [2, 4]  # evaluated "before" in the previous step's state
    # Resumed exactly at T_S: no step before it in this process, so no training-loss jump.
    resumed = TransitionLossJumps(_Phases(phases))
    for iteration in (3, 4):
        resumed.before_transition(iteration, None)
        resumed.observe(iteration, train[iteration])
    event = resumed.take()["T_S"]
    assert event["train_loss_after"] == 3.4 and "train_loss_before" not in event and "eval_loss_jump" not in event


# ------------------------------------------------------------------------------ training end to end
EVOMOE = DTS + ["--train-iters", "6", "--log-interval", "1", "--eval-interval", "2", "--eval-iters", "2",
                "--hidden-dropout", "0.1"]


@pytest.fixture
def train(train_in_process):
    return lambda *extra: train_in_process(*EVOMOE, *extra)


def test_diagnostics_explain_a_run_and_leave_it_unchanged(train, tmp_path):
    tb = tmp_path / "tb"
    logged = train("--log-routing-probe", "20", "--log-moe-diagnostics", "--evomoe-mask-ratio", "0",
                   "--tensorboard-dir", str(tb))
    plain = train("--log-routing-probe", "20", "--evomoe-mask-ratio", "0")
    assert [r["lm_loss"] for r in plain] == [r["lm_loss"] for r in logged]  # bitwise: diagnostics change nothing
    assert [r["grad_norm"] for r in plain] == [r["grad_norm"] for r in logged]
    by_iteration = {r["iteration"]: r for r in logged}
    assert "expert_similarity" not in by_iteration[2]  # the experts are not in use before T_S
    jump = by_iteration[3]["loss_jump"]["T_S"]
    assert jump["eval_loss_before"] == by_iteration[2]["val_loss"]  # the same evaluation, same weights
    # Mask ratio 0: every spawned expert is the shared expert and the DTS weights sum to 1, so the
    # model computes the same function after T_S: no jump, up to rounding.
    assert jump["eval_loss_jump"] == pytest.approx(0.0, abs=1e-5)
    assert jump["train_loss_before"] == by_iteration[2]["lm_loss"]
    assert jump["train_loss_after"] == by_iteration[3]["lm_loss"]
    assert by_iteration[5]["loss_jump"]["T_D"]["eval_loss_before"] == by_iteration[4]["val_loss"]
    for record in logged[2:]:
        assert all(0.99 < s <= 1.0 + 1e-6 for s in record["expert_similarity"])  # r = 0: copies, barely apart
        assert all(0 < h <= math.log(4) + 1e-6 for h in record["gate_entropy"])
        assert all(0 <= m <= 1 for m in record["gate_margin"])
    assert "routing_fluctuation" not in by_iteration[3]  # the first routed log has no predecessor
    assert all(0 <= f <= 1 for r in logged[3:] for f in r["routing_fluctuation"])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(tb)).Reload().Tags()["scalars"]
    for tag in ("expert_similarity/layer_1", "gate_entropy/layer_0", "gate_margin/layer_1",
                "routing_fluctuation/layer_0", "loss_jump/T_S/eval_loss_jump", "loss_jump/T_D/train_loss_jump"):
        assert tag in tags


# Stage 1, then Top-1 (T_D = T_S): the DTS phase's gumbel draws depend on how tokens are split over
# ranks, so it is skipped for the layout comparison (as in test_parallel_equivalence).
LAYOUT_RUN = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "1",
              "--dts-top1-iter", "2", "--train-iters", "5", "--eval-interval", "2", "--eval-iters", "1",
              "--log-routing-probe", "24", "--log-moe-diagnostics"]


def test_diagnostics_on_ep2_equal_one_process():
    single = run_ranks(logged_records, 1, LAYOUT_RUN)[0]
    ep2 = run_ranks(logged_records, 2, LAYOUT_RUN + ["--expert-model-parallel-size", "2"])[0]
    assert [r["iteration"] for r in ep2] == [r["iteration"] for r in single]
    for got, want in zip(ep2, single):
        for key in ("expert_similarity", "gate_entropy", "gate_margin", "routing_fluctuation"):
            assert (key in got) == (key in want)
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    jump = {r["iteration"]: r for r in ep2}[3]["loss_jump"]["T_S"]
    assert jump["to"] == "top1"
    assert jump["eval_loss_jump"] == pytest.approx(
        {r["iteration"]: r for r in single}[3]["loss_jump"]["T_S"]["eval_loss_jump"], abs=1e-6)
    assert any("routing_fluctuation" in r for r in ep2)
