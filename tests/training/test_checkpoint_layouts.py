"""A checkpoint saved under one TP/PP/EP/DP layout resumes under another, optimizer state included.

One chain of runs hands the checkpoint from layout to layout, one iteration each:
1 -> EP2 -> TP2 -> EP2 -> 1 -> PP2xEP2 -> 1. Every hop loads the previous hop's weights and Adam
state, so its loss checks the weights and the next hop's loss checks the Adam moments and step (the
last hop trains two iterations for that). The oracle is one uninterrupted single-process run: the
layouts are exact (test_parallel_equivalence), so the chain's losses must equal it to the same
tolerance. EP changes move the experts between megatron's dense and expert optimizers, PP2xEP2 splits
both over stages, and DP changes re-shard the distributed optimizer.
"""

import json

import pytest

from tests.distributed import run_ranks
from tests.training.checkpoint_ranks import train

TP2 = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
EP2 = ["--expert-model-parallel-size", "2"]
PP2xEP2 = ["--pipeline-model-parallel-size", "2", "--expert-model-parallel-size", "2"]
CHAIN = [(1, []), (2, EP2), (2, TP2), (2, EP2), (1, []), (4, PP2xEP2), (1, [])]
ITERS = len(CHAIN) + 1


def _records(path):
    return [json.loads(line) for line in open(path) if '"lm_loss"' in line]


@pytest.mark.parametrize("optimizer", ["adam", "distributed"])
def test_resume_across_layouts_equals_the_uninterrupted_run(optimizer, tmp_path):
    flags = ["--train-iters", str(ITERS)]
    if optimizer == "distributed":
        flags.append("--use-distributed-optimizer")
    straight, chained, ckpt = str(tmp_path / "straight.jsonl"), str(tmp_path / "chain.jsonl"), str(tmp_path / "ckpt")
    run_ranks(train, 1, flags + ["--log-json", straight])
    for hop, (world_size, layout) in enumerate(CHAIN):
        resume = ["--load", ckpt] if hop else []
        stop = ["--exit-interval", "1"] if hop < len(CHAIN) - 1 else []
        run_ranks(train, world_size, flags + layout + resume + stop + ["--save", ckpt, "--log-json", chained])
    expected, got = _records(straight), _records(chained)
    assert [r["iteration"] for r in got] == list(range(1, ITERS + 1))
    assert [r["lm_loss"] for r in got] == pytest.approx([r["lm_loss"] for r in expected], rel=1e-5)
    assert [r["grad_norm"] for r in got] == pytest.approx([r["grad_norm"] for r in expected], rel=1e-4)
    assert [r["lr"] for r in got] == pytest.approx([r["lr"] for r in expected], rel=1e-6)
