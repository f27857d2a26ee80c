"""examples/gpt_moe_paper_multinode.sh for real: 2 "nodes" (two torchrun node groups on loopback)
x 2 ranks, a tiny model through all EvoMoE phases with the hierarchical all-to-all dispatcher."""

import json
import subprocess

from megatron_evomoe.analysis.local_world import free_port
from tests.examples.conftest import REPO, example_env

TINY = dict(
    NUM_LAYERS=2, HIDDEN=32, HEADS=2, SEQ_LEN=32, NUM_EXPERTS=4, EP=4, MICRO_BATCH=2, GLOBAL_BATCH=8,
    TRAIN_ITERS=3, WARMUP_ITERS=1, SHARED_EXPERT_ITERS=1, ANNEAL_ITERS=1, PRECISION="", LOG_INTERVAL=1,
    EVAL_INTERVAL=3, EVAL_ITERS=1, SAVE_INTERVAL=1000, PROBE_TOKENS=16, DISPATCHER="hierarchical",
)


def test_two_nodes_of_two_ranks(corpus_data, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = dict(TINY, NNODES=2, GPUS_PER_NODE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), CKPT_DIR=ckpt,
                  DATA_PATH=corpus_data["DATA_PATH"], VOCAB_FILE=corpus_data["VOCAB_FILE"],
                  MERGE_FILE=corpus_data["MERGE_FILE"])
    nodes = [
        subprocess.Popen(["bash", "examples/gpt_moe_paper_multinode.sh"], cwd=REPO, text=True,
                         env=example_env(NODE_RANK=rank, **common), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=300)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, out in zip(nodes, outputs):
        assert node.returncode == 0, out[-4000:]
    assert "global 8 sequences = micro 2 x DP 4 (world 4" in outputs[0]
    records = [json.loads(line) for line in open(ckpt / "metrics.jsonl")]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert [r["phase"] for r in records] == ["expert_diversify", "gate_sparsify", "top1"]
    assert sum(records[-1]["tokens_per_expert"][0]) == 8 * 32  # top-1: every token of the global batch once
    assert records[-1]["val_ppl"] > 1 and len(records[-1]["routing_probe"]["token_ids"]) == 16
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "3"
