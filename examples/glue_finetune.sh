#!/usr/bin/env bash
# Fine-tune a pretrained RoBERTa-MoE (examples/bert_moe_pretrain.sh) on one GLUE task with RoBERTa's
# recipe (10 epochs, 6% warm-up, Adam 0.9/0.98, eps 1e-6, weight decay 0.1); the model flags come
# from the checkpoint's model_args.json. RTE starts from the fine-tuned MNLI model, as in the paper.
#
#   TASK=MNLI bash examples/glue_finetune.sh
#   TASK=RTE PRETRAINED=checkpoints/roberta-moe-evomoe-MNLI LR=2e-5 bash examples/glue_finetune.sh
#   TASK=RTE DRY_RUN=1 bash examples/glue_finetune.sh    # validate + model size + memory, no GPU
#
# One node, GPUS_PER_NODE processes (default 1 GPU; the models fit, GLUE is small).
# Batch arithmetic (default, 1 GPU): global 16 sentences(-pairs) = micro 16 x DP 1 x 1 micro-batch of
# 128 tokens; with GPUS_PER_NODE=8: global 128 = micro 16 x DP 8 x 1 (set GLOBAL_BATCH to keep 16 per
# step: 16 = micro 2 x DP 8 x 1).
set -euo pipefail
NNODES=1
NODE_RANK=0
GPUS_PER_NODE=${GPUS_PER_NODE:-1}
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
TASK=${TASK:-RTE}
GLUE_DIR=${GLUE_DIR:-glue_data}
PRETRAINED=${PRETRAINED:-checkpoints/roberta-moe-evomoe}
MICRO_BATCH=${MICRO_BATCH:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-$((MICRO_BATCH * GPUS_PER_NODE))}
SEQ_LEN=${SEQ_LEN:-128}
OUT=${OUT:-checkpoints/$(basename "$PRETRAINED")-$TASK}
RESULTS_DIR=${RESULTS_DIR:-results}
PRECISION=${PRECISION---bf16}

batch_arithmetic "$MICRO_BATCH" "$GLOBAL_BATCH" 1 1 "$SEQ_LEN"
launch finetune_glue.py --task "$TASK" --data-dir "$GLUE_DIR/$TASK" --pretrained-checkpoint "$PRETRAINED" \
    --epochs "${EPOCHS:-10}" --lr "${LR:-1e-5}" --micro-batch-size "$MICRO_BATCH" \
    --global-batch-size "$GLOBAL_BATCH" --seq-length "$SEQ_LEN" --seed "${SEED:-1}" \
    --save "$OUT" --results-json "$RESULTS_DIR/$(basename "$PRETRAINED")-$TASK.json" \
    --predict --predict-dir "${PREDICT_DIR:-submission}" $PRECISION ${EXTRA_ARGS:-}
