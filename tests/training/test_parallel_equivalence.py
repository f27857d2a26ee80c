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
