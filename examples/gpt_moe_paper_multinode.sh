#!/usr/bin/env bash
# The paper's GPT-MoE with EvoMoE on several nodes, one torchrun per node (flags in _gpt_moe_paper_args.sh).
#
#   # on every node (node 0's address as MASTER_ADDR):
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash examples/gpt_moe_paper_multinode.sh   # node 0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash examples/gpt_moe_paper_multinode.sh   # node 1
#   NNODES=2 DRY_RUN=1 bash examples/gpt_moe_paper_multinode.sh                          # validate once, no GPU
#
# Layout: expert parallelism EP = 16 (one expert per GPU, the EP group spans both nodes), data
# parallelism NNODES x 8 for the dense part, and the paper's topology-aware hierarchical all-to-all:
# tokens are gathered per node, only node leaders exchange them across nodes. torchrun's
# LOCAL_WORLD_SIZE tells the dispatcher which ranks share a node.
# Batch arithmetic (NNODES=2, 8 GPUs each): global 256 sequences = micro 8 x DP 16 x 2 micro-batches;
# x 1024 tokens = 262,144 tokens per iteration (the same as on one node: only the layout changes).
set -euo pipefail
NNODES=${NNODES:-2}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_gpt_moe_paper_args.sh"
EP=${EP:-16}

batch_arithmetic "$MICRO_BATCH" "$GLOBAL_BATCH" "$TP" "$PP" "$SEQ_LEN"
launch pretrain_gpt_moe.py "${GPT_MOE_ARGS[@]}" --expert-model-parallel-size "$EP" \
    --moe-token-dispatcher-type "${DISPATCHER:-hierarchical}" ${EXTRA_ARGS:-}
