"""TP, PP, EP, DP and combinations train exactly like one process (gloo ranks on this machine).

Same seed and data; the model is initialised layout-independently, so per-iteration losses and
gradient norms must agree to float tolerance. Losses after the first step depend on the gradients
of the previous steps through Adam, so they check the gradients too.
"""

import pytest

from tests.distributed import run_ranks
from tests.training.layouts import train_and_report


@pytest.fixture(scope="module")
def single_process():
    return run_ranks(train_and_report, 1, [])[0]


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "ep2": (2, ["--expert-model-parallel-size", "2"]),
    "dp2": (2, []),
    "tp2xep2": (4, ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--expert-model-parallel-size", "2"]),
    "pp2xdp2": (4, ["--pipeline-model-parallel-size", "2"]),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_layout_matches_single_process(name, single_process):
    world_size, flags = LAYOUTS[name]
    result = run_ranks(train_and_report, world_size, flags)[0]
    assert len(result["lm_loss"]) == len(single_process["lm_loss"]) == 4
    assert result["lm_loss"] == pytest.approx(single_process["lm_loss"], rel=1e-5)
    assert result["grad_norm"] == pytest.approx(single_process["grad_norm"], rel=1e-4)
    assert result["aux_loss"] == pytest.approx(single_process["aux_loss"], rel=1e-5)
    assert result["tokens_per_expert"] == single_process["tokens_per_expert"]
    # The tiny model learns: the loss moves.
    assert single_process["lm_loss"][-1] < single_process["lm_loss"][0]


# EvoMoE through stage 1, diversify and Top-1 (T_D = T_S: the noisy DTS phase, whose gumbel draws
# depend on how tokens are split over ranks, is skipped). Checks the shared expert's replicas on EP
# ranks, layout-independent spawning, and the gate afterwards.
EVOMOE = ["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "2", "--dts-anneal-iters", "1",
          "--dts-top1-iter", "2"]


@pytest.fixture(scope="module")
def single_process_evomoe():
    return run_ranks(train_and_report, 1, EVOMOE)[0]


@pytest.mark.parametrize("name", ["ep2", "tp2"])
def test_evomoe_layout_matches_single_process(name, single_process_evomoe):
    world_size, flags = LAYOUTS[name]
    result = run_ranks(train_and_report, world_size, EVOMOE + flags)[0]
    assert result["lm_loss"] == pytest.approx(single_process_evomoe["lm_loss"], rel=1e-5)
    assert result["grad_norm"] == pytest.approx(single_process_evomoe["grad_norm"], rel=1e-4)
    assert result["tokens_per_expert"] == single_process_evomoe["tokens_per_expert"]
    assert sum(single_process_evomoe["tokens_per_expert"][-1][0]) > 0  # experts in use after T_S
