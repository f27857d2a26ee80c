"""EvoMoE end to end: exact resume across T_S and T_D, phases in the logs, ablation flags."""

import json
import tempfile

import pytest

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.training.loop import setup_session
from tests.distributed import run_ranks
from tests.moe.evomoe_ranks import losses_of_run, new_log, read_losses
from tests.tiny import tiny_args, tiny_gpt_task, tiny_run

# T_S = 3, anneal 3, T_D = 6; dropout on so that RNG state matters for exactness.
EVOMOE = [
    "--moe-router-type", "dts", "--evomoe-shared-expert-iters", "3", "--dts-anneal-iters", "3",
    "--train-iters", "8", "--hidden-dropout", "0.1",
]


@pytest.fixture(scope="module")
def straight():
    """An uninterrupted 8-step EvoMoE run (its JSON log)."""
    log = new_log()
    run_ranks(losses_of_run, 1, EVOMOE, log)
    return log


def test_resume_exactly_at_ts_and_td_gives_bitwise_identical_losses(straight):
    resumed, ckpt = new_log(), tempfile.mkdtemp()
    save = ["--save", ckpt, "--exit-interval", "3"]
    run_ranks(losses_of_run, 1, EVOMOE + save, resumed)  # stops at 3 = T_S (before diversify)
    run_ranks(losses_of_run, 1, EVOMOE + save + ["--load", ckpt], resumed)  # 3 -> 6 = T_D
    run_ranks(losses_of_run, 1, EVOMOE + ["--save", ckpt, "--load", ckpt], resumed)  # 6 -> 8
    assert len(read_losses(straight)) == 8
    assert read_losses(resumed) == read_losses(straight)
    records = [json.loads(line) for line in open(straight)]
    assert [r["phase"] for r in records] == ["expert_diversify"] * 3 + ["gate_sparsify"] * 3 + ["top1"] * 2
    assert records[0]["experts_per_token"] == [1.0, 1.0] and "balance_loss" in records[0]
    assert records[0]["aux_loss"] == 0.0  # stage 1: task loss only
    assert records[3]["experts_per_token"][0] > 1.0  # dense-ish right after T_S at tau = 2
    assert records[7]["experts_per_token"] == [1.0, 1.0]
    assert [r["temperature"] for r in records[3:6]] == pytest.approx([2.0, 2.0 - 1.7 / 3, 2.0 - 3.4 / 3])


def test_flops_charge_the_shared_expert_as_one_ffn_and_dts_per_visited_expert(straight):
    records = [json.loads(line) for line in open(straight)]
    step_flops = [b["flops"] - a["flops"] for a, b in zip([{"flops": 0.0}] + records, records)]
    # Stage 1 steps cost the same; a DTS step with ~4 experts per token costs more; Top-1 costs
    # stage 1 plus the routers (2 MoE layers x 3 x 2*h*E per token).
    assert step_flops[0] == step_flops[1] == step_flops[2]
    assert step_flops[3] > step_flops[0]
    tokens = 4 * 16
    router_flops = 3 * 2 * (2 * 32 * 4) * tokens
    assert step_flops[7] == pytest.approx(step_flops[0] + router_flops)


def _option_diff(flags):
    base = vars(parse_args(tiny_args(*EVOMOE)))
    changed = vars(parse_args(tiny_args(*EVOMOE, *flags)))
    return {k for k in base if base[k] != changed[k]}


def test_ablation_flags_change_only_what_they_say(megatron_world_of_one):
    assert _option_diff(["--no-expert-diversify"]) == {"no_expert_diversify"}
    assert _option_diff(["--no-gate-sparsify"]) == {"no_gate_sparsify"}
    full = tiny_run(*EVOMOE).model
    no_div = tiny_run(*EVOMOE, "--no-expert-diversify").model
    no_sparse = tiny_run(*EVOMOE, "--no-gate-sparsify").model
    assert no_div.moe_router.expert_diversify is False and no_div.moe_router.shared_expert_iters == 0
    assert no_sparse.moe_router.gate_sparsify is False and no_sparse.moe_router.shared_expert_iters == 3
    for config in (no_div, no_sparse):
        for field in ("mask_ratio", "dts_threshold", "dts_max_temperature", "dts_min_temperature"):
            assert getattr(config.moe_router, field) == getattr(full.moe_router, field)
    # w/o expert-diversify: no shared expert, the DTS gate from step 0.
    session = setup_session(tiny_run(*EVOMOE, "--no-expert-diversify"), tiny_gpt_task())
    assert all(layer.shared_expert is None for layer in moe_layers(session.model))
    assert session.controller.routing_state(0).phase == "gate_sparsify"
    # w/o gate-sparsify: shared expert, then Switch's top-1 at tau = 1.
    session = setup_session(tiny_run(*EVOMOE, "--no-gate-sparsify"), tiny_gpt_task())
    assert all(layer.shared_expert is not None for layer in moe_layers(session.model))
    state = session.controller.routing_state(3)
    assert (state.phase, state.temperature) == ("top1", 1.0)


def test_both_ablations_together_are_rejected():
    with pytest.raises(ValueError, match="plain Switch"):
        tiny_run(*EVOMOE, "--no-expert-diversify", "--no-gate-sparsify")
