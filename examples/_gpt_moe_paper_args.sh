# The paper's GPT-MoE (sourced by the GPT launch scripts): 24 decoder layers, hidden 1024, 16 heads,
# an MoE layer on every other FFN (12 MoE layers x 16 experts = 192 experts), GeLU, Adam (0.9, 0.98),
# weight decay 0.1, dropout 0.1, no clipping, polynomial LR decay, 10k warm-up; EvoMoE: 10k steps of
# expert-diversify, then tau 2.0 -> 0.3 over 5k steps, Top-1 after; balance loss 0.1 (paper Table III
# setup: OpenWebText, 200k steps). Batch size and LR are not given by the paper: global batch 256 x
# 1024 tokens and LR 3e-4 -> 3e-5 are ours. Every value can be overridden from the environment
# (the tests run a tiny model through the same script).
NUM_LAYERS=${NUM_LAYERS:-24}
HIDDEN=${HIDDEN:-1024}
HEADS=${HEADS:-16}
SEQ_LEN=${SEQ_LEN:-1024}
NUM_EXPERTS=${NUM_EXPERTS:-16}
TP=${TP:-1}
PP=${PP:-1}
MICRO_BATCH=${MICRO_BATCH:-8}
GLOBAL_BATCH=${GLOBAL_BATCH:-256}
TRAIN_ITERS=${TRAIN_ITERS:-200000}
WARMUP_ITERS=${WARMUP_ITERS:-10000}
SHARED_EXPERT_ITERS=${SHARED_EXPERT_ITERS:-10000}
ANNEAL_ITERS=${ANNEAL_ITERS:-5000}
LR=${LR:-3e-4}
PRECISION=${PRECISION---bf16}
DATA_PATH=${DATA_PATH:-data/corpus_text_document}
VOCAB_FILE=${VOCAB_FILE:-data/tokenizer/vocab.json}
MERGE_FILE=${MERGE_FILE:-data/tokenizer/merges.txt}
CKPT_DIR=${CKPT_DIR:-checkpoints/gpt-moe-evomoe}
SAVE_INTERVAL=${SAVE_INTERVAL:-5000}
LOG_INTERVAL=${LOG_INTERVAL:-100}
EVAL_INTERVAL=${EVAL_INTERVAL:-2000}
EVAL_ITERS=${EVAL_ITERS:-50}
PROBE_TOKENS=${PROBE_TOKENS:-1024}

GPT_MOE_ARGS=(
    --tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE"
    --data-path "$DATA_PATH" --split 949,50,1
    --num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
    --seq-length "$SEQ_LEN" --max-position-embeddings "$SEQ_LEN"
    --num-experts "$NUM_EXPERTS" --moe-layer-freq 2 --moe-router-type dts --moe-aux-loss-coeff 0.1
    --evomoe-shared-expert-iters "$SHARED_EXPERT_ITERS" --dts-anneal-iters "$ANNEAL_ITERS"
    --dts-max-temperature 2.0 --dts-min-temperature 0.3 --dts-threshold 0.001
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS"
    --lr "$LR" --min-lr "$(awk "BEGIN {print $LR / 10}")" --lr-decay-style polynomial --lr-warmup-iters "$WARMUP_ITERS"
    --adam-beta1 0.9 --adam-beta2 0.98 --weight-decay 0.1 --clip-grad 0.0
    --hidden-dropout 0.1 --attention-dropout 0.1 $PRECISION
    --save "$CKPT_DIR" $(resume_flag "$CKPT_DIR") --save-interval "$SAVE_INTERVAL" --exit-signal-handler
    --log-interval "$LOG_INTERVAL" --eval-interval "$EVAL_INTERVAL" --eval-iters "$EVAL_ITERS"
    --log-json "$CKPT_DIR/metrics.jsonl" --tensorboard-dir "$CKPT_DIR/tensorboard"
    --log-routing-probe "$PROBE_TOKENS"
)
if (( TP > 1 )); then GPT_MOE_ARGS+=(--sequence-parallel); fi
