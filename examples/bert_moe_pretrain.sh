#!/usr/bin/env bash
# The paper's RoBERTa-MoE (MLM) with EvoMoE on one node of 8 GPUs: 24 layers, hidden 1024, 16 heads,
# 16 experts on every other FFN, seq 512, 100k steps with 5k warm-up, EvoMoE 5k steps of
# expert-diversify then tau 2.0 -> 0.3 over 5k steps (paper sec. IV-B); RoBERTa's optimiser
# (Adam 0.9/0.98, eps 1e-6, weight decay 0.1, no clipping, polynomial decay), dropout 0.1; MLM only
# (--bert-no-binary-head: RoBERTa has no sentence-pair head).
#
#   bash examples/bert_moe_pretrain.sh                  # data from examples/preprocess_corpus.sh (sentences)
#   DRY_RUN=1 bash examples/bert_moe_pretrain.sh        # validate + model size + per-GPU memory, no GPU
#
# Batch arithmetic: global 256 sequences = micro 4 x DP 8 x 8 micro-batches; x 512 tokens = 131,072
# tokens per iteration. Fine-tune the result with examples/glue_finetune.sh.
set -euo pipefail
NNODES=1
NODE_RANK=0
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN=${HIDDEN:-1024}
HEADS=${HEADS:-16}
SEQ_LEN=${SEQ_LEN:-512}
NUM_EXPERTS=${NUM_EXPERTS:-16}
EP=${EP:-8}
MICRO_BATCH=${MICRO_BATCH:-4}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
TRAIN_ITERS=${TRAIN_ITERS:-100000}
PRECISION=${PRECISION---bf16}
DATA_PATH=${DATA_PATH:-data/corpus_text_sentence}
VOCAB_FILE=${VOCAB_FILE:-data/tokenizer/vocab.json}
MERGE_FILE=${MERGE_FILE:-data/tokenizer/merges.txt}
CKPT_DIR=${CKPT_DIR:-checkpoints/roberta-moe-evomoe}

batch_arithmetic "$MICRO_BATCH" "$GLOBAL_BATCH" 1 1 "$SEQ_LEN"
launch pretrain_bert_moe.py \
    --tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE" \
    --data-path "$DATA_PATH" --split 949,50,1 \
    --num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS" \
    --seq-length "$SEQ_LEN" --max-position-embeddings "$SEQ_LEN" \
    --bert-no-binary-head --num-experts "$NUM_EXPERTS" --moe-layer-freq 2 --moe-router-type dts --moe-aux-loss-coeff 0.1 \
    --expert-model-parallel-size "$EP" --moe-token-dispatcher-type "${DISPATCHER:-alltoall}" \
    --evomoe-shared-expert-iters "${SHARED_EXPERT_ITERS:-5000}" --dts-anneal-iters "${ANNEAL_ITERS:-5000}" \
    --dts-max-temperature 2.0 --dts-min-temperature 0.3 \
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" \
    --lr "${LR:-6e-4}" --min-lr 0 --lr-decay-style polynomial --lr-warmup-iters "${WARMUP_ITERS:-5000}" \
    --adam-beta1 0.9 --adam-beta2 0.98 --adam-eps 1e-6 --weight-decay 0.1 --clip-grad 0.0 \
    --hidden-dropout 0.1 --attention-dropout 0.1 $PRECISION \
    --save "$CKPT_DIR" $(resume_flag "$CKPT_DIR") --save-interval "${SAVE_INTERVAL:-5000}" \
    --log-interval "${LOG_INTERVAL:-100}" --eval-interval "${EVAL_INTERVAL:-2000}" --eval-iters "${EVAL_ITERS:-50}" \
    --log-json "$CKPT_DIR/metrics.jsonl" --tensorboard-dir "$CKPT_DIR/tensorboard" ${EXTRA_ARGS:-}
