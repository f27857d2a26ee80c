"""End to end: the tiny GPT-MoE trains with every dispatcher to the same losses as allgather.

World 4 as 2 fake nodes x 2 ranks (``--moe-ranks-per-node 2``): expert parallelism 4, tensor x
expert parallelism 2 x 2 (sequence parallel, expert tensor parallelism 2), pipeline x expert
parallelism 2 x 2, and MoE-aware recomputation. In the same processes, one MoE layer per registered
router (Switch, GShard, BASE, Hash, StableMoE, DSelect-k, DTS with Gumbel noise and 0..E experts per
token) gives the allgather output and gradients with the all-to-all dispatchers, with and without
MoE-aware recomputation.
"""

import pytest

from megatron_evomoe.moe.routers import available_routers
from tests.moe.dispatch.training_ranks import RUNS


@pytest.mark.slow
def test_every_dispatcher_trains_like_allgather(world_of_four_report):
    baseline, *others = world_of_four_report[0]["training"]
    for (layout, dispatcher, extra), result in zip(RUNS[1:], others):
        label = f"{layout} {dispatcher} {' '.join(extra)}"
        assert result["lm_loss"] == pytest.approx(baseline["lm_loss"], rel=1e-6), label
        assert result["grad_norm"] == pytest.approx(baseline["grad_norm"], rel=1e-5), label


def test_every_router_gives_the_allgather_layer_with_every_dispatcher(world_of_four_report):
    for report in world_of_four_report:
        layers = report["layers"]
        assert {name.split("/")[0] for name in layers} == set(available_routers()) >= {"switch", "dts"}
        assert max(layers.values()) < 1e-5
