# Shared by the examples (sourced, not run). Two helpers:
#
#   launch SCRIPT ARGS...   torchrun SCRIPT over NNODES x GPUS_PER_NODE processes (static rendezvous
#                           at MASTER_ADDR:MASTER_PORT, this node = NODE_RANK). With DRY_RUN=1 it runs
#                           SCRIPT once, without torchrun, with --dry-run and WORLD_SIZE=NNODES x
#                           GPUS_PER_NODE: the full config is validated for that world size and the
#                           model size and per-GPU memory estimate are printed; nothing trains.
#   batch_arithmetic        checks and prints global batch = micro batch x DP x micro-batches.
#   resume_flag DIR         --load DIR when DIR holds a checkpoint (so the same command starts and resumes).
#
# Environment: PYTHON (default python3), TORCHRUN (default torchrun), REPO (default: the parent of
# this directory), NNODES, NODE_RANK, GPUS_PER_NODE, MASTER_ADDR, MASTER_PORT (a script sets its own
# defaults before sourcing this file).

REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
PYTHON=${PYTHON:-python3}
TORCHRUN=${TORCHRUN:-torchrun}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}

batch_arithmetic() {  # MICRO_BATCH GLOBAL_BATCH TP PP SEQ_LEN
    local micro=$1 global=$2 tp=$3 pp=$4 seq=$5
    local world=$((NNODES * GPUS_PER_NODE))
    local dp=$((world / (tp * pp)))
    if (( dp < 1 || global % (micro * dp) != 0 )); then
        echo "error: global batch $global is not a multiple of micro batch $micro x DP $dp" >&2
        exit 2
    fi
    echo "batch: global $global sequences = micro $micro x DP $dp (world $world / (TP $tp x PP $pp))" \
         "x $((global / (micro * dp))) micro-batches; $((global * seq)) tokens per iteration"
}

resume_flag() {  # CKPT_DIR: "--load CKPT_DIR" once it holds a checkpoint (a fresh run starts without)
    if [[ -f "$1/latest_checkpointed_iteration.txt" ]]; then echo "--load $1"; fi
}

launch() {
    local script=$1
    shift
    if [[ "${DRY_RUN:-0}" == 1 ]]; then
        # No GPU needed: the entry script builds the model on the meta device.
        WORLD_SIZE=$((NNODES * GPUS_PER_NODE)) RANK=0 LOCAL_RANK=0 CUDA_VISIBLE_DEVICES="" \
            "$PYTHON" "$REPO/$script" "$@" --dry-run
    else
        "$TORCHRUN" --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$GPUS_PER_NODE" \
            --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" "$REPO/$script" "$@"
    fi
}
