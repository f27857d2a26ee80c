#!/usr/bin/env bash
# The paper's GPT-MoE with EvoMoE on one node of 8 GPUs (flags in _gpt_moe_paper_args.sh).
#
#   bash examples/gpt_moe_paper_1node.sh                # train (resumes from CKPT_DIR if it holds a checkpoint)
#   DRY_RUN=1 bash examples/gpt_moe_paper_1node.sh      # validate + model size + per-GPU memory, no GPU needed
#
# Layout: expert parallelism 8 (2 of the 16 experts per GPU), data parallelism 8 for the dense part,
# flat all-to-all inside the node.
# Batch arithmetic: global 256 sequences = micro 8 x DP 8 x 4 micro-batches; x 1024 tokens = 262,144
# tokens per iteration; 200k iterations = 52.4B tokens.
set -euo pipefail
NNODES=1
NODE_RANK=0
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
source "$(dirname "${BASH_SOURCE[0]}")/_gpt_moe_paper_args.sh"
EP=${EP:-8}

batch_arithmetic "$MICRO_BATCH" "$GLOBAL_BATCH" "$TP" "$PP" "$SEQ_LEN"
launch pretrain_gpt_moe.py "${GPT_MOE_ARGS[@]}" --expert-model-parallel-size "$EP" \
    --moe-token-dispatcher-type "${DISPATCHER:-alltoall}" ${EXTRA_ARGS:-}
