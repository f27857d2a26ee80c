"""FLOPs accounting against hand computations, per router and EvoMoE phase."""

import pytest

from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.training.flops import training_step_flops
from tests.tiny import tiny_run


def test_step_flops_by_hand():
    # tiny: 4 layers, h 32, heads 4, ffn 64, MoE on layers 0 and 2 (4 experts), vocab 128, seq 16.
    config = tiny_run().model
    tokens, seq = 64, 16
    h, f, v = 32, 64, 128
    attention = 2 * h * (3 * h) + 2 * h * h + 2 * 2 * seq * h
    dense_ffn = 2 * 2 * h * f
    expert_ffn = 2 * 2 * h * f
    gate = 2 * h * 4
    assignments = [64.0, 128.0]  # layer 0: top-1; layer 2: two experts per token
    forward = tokens * (4 * attention + 2 * dense_ffn + 2 * h * v)
    forward += sum(a * expert_ffn for a in assignments) + 2 * tokens * gate
    assert training_step_flops(config, seq, tokens, assignments, gate) == pytest.approx(3 * forward)


@pytest.mark.parametrize(
    "router, extra, phase, expected",
    [
        ("switch", [], "sparse", 2 * 32 * 4),
        ("hash", [], "sparse", 0.0),
        ("dts", [], "expert_diversify", 0.0),
        ("dts", [], "gate_sparsify", 2 * 32 * 4),
        ("stablemoe", ["--stablemoe-distill-dim", "10"], "stage1", 2 * 32 * 4 + 2 * 10 * 4),
        ("stablemoe", ["--stablemoe-distill-dim", "10"], "stage2", 2 * 32 * 4),
        ("dselectk", ["--moe-router-topk", "2"], "sparse", 2 * 32 * 2 * (2 + 1)),  # m = log2(4) = 2
    ],
)
def test_gate_flops_per_router(router, extra, phase, expected):
    config = tiny_run("--moe-router-type", router, *extra).model
    assert router_class(router).gate_flops(config, RoutingState(phase=phase)) == expected
