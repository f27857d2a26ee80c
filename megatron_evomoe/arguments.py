"""Command-line flags (Megatron-LM's names) and their validation into one :class:`RunConfig`.

Every flag of the training scripts is defined here (data and tokenizer flags in ``data/flags.py``,
shared with the preprocessing tools; the router flags are generated from each router's ``Config`` in
``router_arguments.py``). ``build_run_config`` is the only place that checks flag combinations and
fills megatron-core's configs; invalid input raises :class:`~megatron_evomoe.errors.InputError` with
one line that names the flags involved.

The parser half imports neither torch nor megatron-core (nor does anything it imports), so
``--help`` and a mistyped flag answer in a fraction of a second; the validation half imports them
inside the functions that build megatron-core's configs, once the flags have parsed
(``tests/test_help.py`` keeps it so).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

from megatron_evomoe.bert_arguments import BertOptions, bert_options_from_args
from megatron_evomoe.data.flags import add_data_args, add_tokenizer_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_rules import check_required, resolve_train_iters, warmup_iters
from megatron_evomoe.help_format import HelpFormatter
from megatron_evomoe.moe.dispatch import available_dispatchers
from megatron_evomoe.moe.dispatch.options import DispatchOptions
from megatron_evomoe.moe.router_config import RunShape
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.moe_layer_freq import moe_layer_pattern, parse_moe_layer_freq
from megatron_evomoe.router_arguments import add_router_args, router_config_from_args, selected_topk

if TYPE_CHECKING:  # imported where used: building the parser must not load torch or megatron-core
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from megatron_evomoe.config import ModelConfig, TrainingConfig
    from megatron_evomoe.data.gpt_dataset import GPTDataConfig
    from megatron_evomoe.initialize import ParallelLayout


@dataclass
class RunConfig:
    """Everything a run needs, validated and typed (the argparse namespace does not outlive it)."""

    model: ModelConfig
    optimizer: OptimizerConfig
    ddp: DistributedDataParallelConfig
    training: TrainingConfig
    layout: ParallelLayout
    world_size: int
    data: Optional[GPTDataConfig] = None
    """The data flags (None when no --data-path / --train-data-path was given, e.g. fine-tuning)."""
    bert: Optional[BertOptions] = None
    """The BERT flags of pretrain_bert_moe.py and finetune_glue.py (None for GPT)."""
    distributed_timeout_minutes: int = 30
    flags: Mapping[str, Any] = field(default_factory=dict)
    """The command line as parsed (a copy): only written into records (results JSON,
    ``model_args.json``); code reads the typed fields above."""

    @property
    def data_parallel_size(self) -> int:
        return self.layout.data_parallel_size(self.world_size)

    @property
    def num_microbatches(self) -> int:
        return self.training.num_microbatches(self.data_parallel_size)


# --------------------------------------------------------------------------------------- flags
# Group titles follow Megatron-LM's argument groups. ``training/model_args.py`` saves the flags of
# the model-defining groups (MODEL_GROUP, MOE_GROUP, the router groups, tokenizer, BERT) with BERT
# checkpoints, so a flag's group decides whether fine-tuning inherits it.
MODEL_GROUP = "model"
MOE_GROUP = "MoE"


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(MODEL_GROUP, "network size, dropout and initialisation")
    p = parser.add_argument_group("mixed precision")
    g.add_argument("--num-layers", type=int, default=None, help="number of transformer layers (required)")
    g.add_argument("--hidden-size", type=int, default=None, help="transformer hidden size (required)")
    g.add_argument("--num-attention-heads", type=int, default=None, help="number of attention heads (required)")
    g.add_argument(
        "--ffn-hidden-size", type=int, default=None, help="hidden size of the dense FFN (default: 4 x --hidden-size)"
    )
    g.add_argument(
        "--seq-length", type=int, default=None, help="tokens per sample: the sequence length to train on (required)"
    )
    g.add_argument(
        "--max-position-embeddings", type=int, default=None,
        help="number of learned position embeddings, >= --seq-length (default: --seq-length)",
    )
    g.add_argument(
        "--make-vocab-size-divisible-by", type=int, default=128,
        help="pad the vocabulary to a multiple of this value x --tensor-model-parallel-size (GEMM efficiency)",
    )
    g.add_argument(
        "--hidden-dropout", type=float, default=0.1, help="dropout probability of the attention and FFN outputs"
    )
    g.add_argument("--attention-dropout", type=float, default=0.1, help="dropout probability of the attention weights")
    g.add_argument(
        "--init-method-std", type=float, default=0.02,
        help="standard deviation of the zero-mean normal distribution that initialises the weights",
    )
    g.add_argument(
        "--norm-epsilon", "--layernorm-epsilon", dest="norm_epsilon", type=float, default=1e-5,
        help="epsilon of every LayerNorm (--layernorm-epsilon: this project's former name, kept as an alias)",
    )
    p.add_argument("--bf16", action="store_true", help="bf16 weights and activations, fp32 master weights")
    p.add_argument(
        "--fp16", action="store_true",
        help="fp16 weights and activations with loss scaling (dynamic unless --loss-scale), fp32 master weights",
    )
    p.add_argument(
        "--loss-scale", type=float, default=None,
        help="static loss scale of --fp16 (a power of 2); default: dynamic loss scaling",
    )
    p.add_argument("--initial-loss-scale", type=float, default=2.0**32, help="initial dynamic loss scale of --fp16")


def _add_parallel_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("distributed")
    r = parser.add_argument_group("activation recomputation")
    g.add_argument("--tensor-model-parallel-size", type=int, default=1, help="degree of tensor model parallelism")
    g.add_argument(
        "--pipeline-model-parallel-size", type=int, default=1,
        help="degree of pipeline model parallelism (pipeline stages; it must divide --num-layers)",
    )
    g.add_argument(
        "--expert-model-parallel-size", type=int, default=1,
        help="degree of expert model parallelism: each MoE layer's experts are split over this many ranks",
    )
    g.add_argument(
        "--expert-tensor-parallel-size", type=int, default=None,
        help="degree of tensor parallelism inside each expert (default: --tensor-model-parallel-size)",
    )
    g.add_argument(
        "--sequence-parallel", action="store_true",
        help="split layer norms and dropout along the sequence over the tensor-parallel ranks (required with "
        "MoE and TP > 1)",
    )
    g.add_argument(
        "--use-distributed-optimizer", action="store_true",
        help="shard the optimizer state (fp32 master weights, Adam moments) over the data-parallel ranks",
    )
    g.add_argument(
        "--distributed-timeout-minutes", type=int, default=30, help="timeout of torch.distributed collectives"
    )
    r.add_argument(
        "--recompute-granularity", choices=["full", "selective"], default=None,
        help="activation recomputation as in Megatron-LM: 'full' recomputes whole transformer layers "
        "(--recompute-method), 'selective' only the attention core; default: none",
    )
    r.add_argument(
        "--recompute-method", choices=["uniform", "block"], default="uniform",
        help="with --recompute-granularity full: 'uniform' recomputes each group of --recompute-num-layers "
        "layers from its input; 'block' recomputes the first --recompute-num-layers layers of each stage",
    )
    r.add_argument(
        "--recompute-num-layers", type=int, default=1,
        help="layers per recomputed group ('uniform') or recomputed layers per pipeline stage ('block')",
    )
    r.add_argument(
        "--moe-recompute", choices=["none", "moe_aware"], default="none",
        help="moe_aware with --recompute-granularity full (the paper's): recompute whole layers from "
        "their input but replay the all-to-alls' recorded results instead of re-running them; alone: "
        "recompute the MoE layer's router and experts from its input and the dispatch all-to-all's output",
    )


def _add_moe_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group(MOE_GROUP, "mixture-of-experts layers and their router")
    g.add_argument(
        "--num-experts", type=int, default=None, help="experts per MoE layer; default: a dense model (no MoE layer)"
    )
    g.add_argument(
        "--moe-layer-freq", default=2,  # read by build_run_config (moe_layer_freq.py): one-line errors
        help="an int k: an MoE layer where layer %% k == 0 (layers counted from 0), or a Python list expression "
        "of 1 (MoE) / 0 (dense) per layer, e.g. '([0]+[1]*23)' (Megatron-LM's syntax); 2 is every other FFN, "
        "as in the EvoMoE paper (Megatron-LM's default is 1)",
    )
    g.add_argument(
        "--moe-ffn-hidden-size", type=int, default=None,
        help="hidden size of each expert's FFN (default: --ffn-hidden-size)",
    )
    add_router_args(parser, g)
    d = parser.add_argument_group("MoE token dispatch", "how tokens reach the expert-parallel ranks of their experts")
    g.add_argument(
        "--moe-expert-capacity-factor", type=float, default=None,
        help="cap each expert at factor x tokens x k / experts tokens per micro-batch; tokens over the cap skip "
        "the expert (residual only); default: dropless",
    )
    g.add_argument(
        "--moe-token-drop-policy", choices=["probs", "position"], default="probs",
        help="with --moe-expert-capacity-factor, an expert over capacity drops the tokens with the lowest router "
        "weights ('probs') or the last ones in the micro-batch ('position')",
    )
    g.add_argument(
        "--moe-grouped-gemm", action=argparse.BooleanOptionalAction, default=None,
        help="all local experts in grouped GEMMs (TE on GPU, else torch._grouped_mm); default: on for "
        "fp32 on the CPU, where it measured faster than the per-expert loop, else off (docs/measurement.md)",
    )
    d.add_argument(
        "--moe-token-dispatcher-type", choices=available_dispatchers(), default="allgather",
        help="allgather (the reference), alltoall (flat), hierarchical (the paper's topology-aware all-to-all), "
        "hierarchical_2d (intra-node, then inter-node), auto (the alpha-beta cost model picks per call)",
    )
    d.add_argument(
        "--moe-ranks-per-node", type=int, default=None,
        help="ranks per node for the hierarchical all-to-all (default: LOCAL_WORLD_SIZE)",
    )
    d.add_argument(
        "--moe-a2a-alpha-intra", type=float, default=DispatchOptions.alpha_intra,
        help="cost model: latency of one intra-node message, in seconds",
    )
    d.add_argument(
        "--moe-a2a-beta-intra", type=float, default=DispatchOptions.beta_intra,
        help="cost model: seconds per byte within a node",
    )
    d.add_argument(
        "--moe-a2a-alpha-inter", type=float, default=DispatchOptions.alpha_inter,
        help="cost model: latency of one inter-node message, in seconds",
    )
    d.add_argument(
        "--moe-a2a-beta-inter", type=float, default=DispatchOptions.beta_inter,
        help="cost model: seconds per byte between nodes (one network card per node)",
    )
    d.add_argument(
        "--moe-a2a-calibrate", action="store_true",
        help="measure the cost model's alpha and beta with a ping-pong at start-up (auto dispatcher)",
    )
    g.add_argument(
        "--moe-per-layer-logging", action="store_true",
        help="log each MoE layer's auxiliary losses (e.g. balance_loss_per_layer/layer_0), not only their "
        "mean over MoE layers (Megatron-LM's flag)",
    )


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("training")
    lr = parser.add_argument_group("learning rate")
    opt = parser.add_argument_group("optimizer", "Adam with decoupled weight decay and gradient clipping")
    g.add_argument(
        "--micro-batch-size", type=int, default=None,
        help="samples per forward/backward pass on each data-parallel rank (required)",
    )
    g.add_argument(
        "--global-batch-size", type=int, default=None,
        help="samples per optimizer step, a multiple of micro batch x data-parallel size (the rest is gradient "
        "accumulation); default: micro batch x data-parallel size",
    )
    length = g.add_mutually_exclusive_group()  # Megatron-LM: one of the two
    length.add_argument(
        "--train-iters", type=int, default=None, help="optimizer steps to train for (this or --train-samples required)"
    )
    length.add_argument(
        "--train-samples", type=int, default=None,
        help="train on this many samples instead of --train-iters: --train-samples // --global-batch-size "
        "iterations (the partial last batch dropped, as in Megatron-LM)",
    )
    lr.add_argument("--lr", type=float, default=None, help="peak learning rate, reached after warm-up (required)")
    lr.add_argument("--min-lr", type=float, default=0.0, help="the learning rate never decays below this")
    lr.add_argument(
        "--lr-decay-style", choices=["constant", "linear", "cosine", "polynomial"], default="linear",
        help="decay from --lr to --min-lr after warm-up ('polynomial': fairseq's polynomial_decay)",
    )
    lr.add_argument("--lr-decay-power", type=float, default=1.0, help="exponent of --lr-decay-style polynomial")
    warmup = lr.add_mutually_exclusive_group()  # Megatron-LM: one of the two
    warmup.add_argument("--lr-warmup-iters", type=int, default=0, help="steps of linear warm-up from 0 to --lr")
    warmup.add_argument(
        "--lr-warmup-fraction", type=float, default=None,
        help="warm-up as a fraction of --lr-decay-iters (default: of the training iterations) instead of "
        "--lr-warmup-iters; finetune_glue.py: 0.06 (RoBERTa) when neither is given",
    )
    lr.add_argument(
        "--lr-decay-iters", type=int, default=None,
        help="steps over which the learning rate decays, warm-up included (default: --train-iters)",
    )
    opt.add_argument("--weight-decay", type=float, default=0.01, help="decoupled weight decay (AdamW)")
    opt.add_argument("--adam-beta1", type=float, default=0.9, help="Adam's beta1 (first-moment decay)")
    opt.add_argument(
        "--adam-beta2", type=float, default=0.999, help="Adam's beta2 (second-moment decay; paper: 0.98)"
    )
    opt.add_argument("--adam-eps", type=float, default=1e-8, help="Adam's epsilon, added to the denominator")
    opt.add_argument("--clip-grad", type=float, default=1.0, help="clip the global gradient norm to this (0: off)")
    g.add_argument(
        "--seed", type=int, default=1234,
        help="random seed of initialisation, dropout, routing noise and (without --data-seed) the data order",
    )
    g.add_argument("--max-skipped-iters", type=int, default=10, help="consecutive non-finite steps before stopping")
    g.add_argument(
        "--exit-interval", type=int, default=None,
        help="stop (after a checkpoint with --save) when the iteration is a multiple of this",
    )
    g.add_argument(
        "--exit-duration-in-mins", type=float, default=None,
        help="stop after this many minutes of training (all ranks at the same iteration), saving a "
        "checkpoint first with --save",
    )
    g.add_argument(
        "--exit-signal-handler", action="store_true",
        help="on SIGTERM (SLURM preemption, time limit) save a checkpoint at the end of the current step and exit 0",
    )
    g.add_argument(
        "--dry-run", action="store_true",
        help="validate (the data and tokenizer files must exist), print sizes and memory, do not train",
    )
    e = parser.add_argument_group("validation")
    c = parser.add_argument_group("checkpointing")
    log = parser.add_argument_group("logging")
    e.add_argument(
        "--eval-interval", type=int, default=1000, help="evaluate on the validation set every this many steps"
    )
    e.add_argument("--eval-iters", type=int, default=10, help="validation global batches per evaluation")
    e.add_argument(
        "--eval-as-served", action="store_true",
        help="also score the validation set with the routing the trained model is served with (its final "
        "state: EvoMoE's Top-1 gate while training still runs the dense DTS mixture); logged as "
        "val_served_loss / val_served_ppl next to val_loss / val_ppl",
    )
    c.add_argument(
        "--save", default=None,
        help="directory to save checkpoints to (at the end of training, every --save-interval steps, on exit)",
    )
    c.add_argument(
        "--save-interval", type=int, default=None,
        help="also save a checkpoint every this many steps; needs --save",
    )
    c.add_argument("--load", default=None, help="directory of the checkpoint to resume from (its latest)")
    c.add_argument("--finetune", action="store_true", help="load model weights only, start at iteration 0")
    c.add_argument(
        "--no-load-optim", action="store_true",
        help="do not load the optimizer state (nor the learning-rate schedule) from --load",
    )
    c.add_argument(
        "--no-load-rng", action="store_true", help="do not load the random-number generator states from --load"
    )
    c.add_argument(
        "--ckpt-step", type=int, default=None,
        help="load the checkpoint of this iteration from --load instead of the latest (rollback)",
    )
    c.add_argument(
        "--save-retain", type=int, default=None, metavar="N",
        help="keep only the newest N checkpoints in --save (never the one loaded); default: keep all",
    )
    c.add_argument(
        "--allow-nonfinite-load", action="store_true",
        help="load a checkpoint whose weights or optimizer state hold NaN/inf (warns) instead of refusing",
    )
    lr.add_argument(
        "--override-opt_param-scheduler", action="store_true",
        help="on resume, take --lr, --min-lr, warm-up, decay iterations and style from the flags "
        "instead of the checkpoint (the schedule position still comes from the checkpoint)",
    )
    lr.add_argument(
        "--use-checkpoint-opt_param-scheduler", action="store_true",
        help="on resume, keep the checkpoint's LR schedule and ignore the flags that differ",
    )
    log.add_argument("--log-interval", type=int, default=10, help="log the training metrics every this many steps")
    log.add_argument("--tensorboard-dir", default=None, help="write TensorBoard event files to this directory")
    log.add_argument("--log-json", default=None, help="append one JSON object per logged iteration")
    log.add_argument(
        "--log-routing-probe", type=int, default=0, metavar="N",
        help="at each log interval, route the first N validation tokens in eval mode and log each token's "
        "id and expert per MoE layer (training/routing_probe.py; 0: off)",
    )
    log.add_argument(
        "--log-moe-diagnostics", action="store_true",
        help="per MoE layer at each log interval: expert weight similarity and, with --log-routing-probe, gate "
        "entropy, top-1/top-2 margin and routing fluctuation; the loss jump at each routing phase change "
        "(training/moe_diagnostics.py)",
    )


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors (unknown flag, invalid choice) are one line with a hint, not the
    ~100-line usage block followed by the error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(
    description: str, extra_args_provider: Optional[Callable[[argparse.ArgumentParser], None]] = None
) -> argparse.ArgumentParser:
    """The full parser of a training script (plus the script's own flags, if any). Building it
    imports neither torch nor megatron-core, so ``--help`` and flag errors answer at once."""
    parser = OneLineErrorParser(description=description, allow_abbrev=False, formatter_class=HelpFormatter)
    _add_model_args(parser)
    _add_parallel_args(parser)
    _add_moe_args(parser)
    _add_training_args(parser)
    add_tokenizer_args(parser)
    add_data_args(parser)
    if extra_args_provider is not None:
        extra_args_provider(parser)
    return parser


# ----------------------------------------------------------------------------------- validation
def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InputError(message)


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _validate_parallel(args: argparse.Namespace, world_size: int) -> ParallelLayout:
    from megatron_evomoe.initialize import ParallelLayout

    tp, pp, ep = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.expert_model_parallel_size
    layout = ParallelLayout(tp, pp, ep, args.expert_tensor_parallel_size)
    layout.validate(world_size)
    _check(
        args.num_attention_heads % tp == 0,
        f"--num-attention-heads {args.num_attention_heads} is not divisible by --tensor-model-parallel-size {tp}",
    )
    _check(
        args.num_layers % pp == 0,
        f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size {pp}",
    )
    if args.num_experts is not None:
        _check(args.num_experts >= 1, f"--num-experts must be >= 1, got {args.num_experts}")
        _check(
            args.num_experts % ep == 0,
            f"--num-experts {args.num_experts} is not divisible by --expert-model-parallel-size {ep}",
        )
        dp = layout.data_parallel_size(world_size)
        _check(
            (dp * tp) % (ep * (args.expert_tensor_parallel_size or tp)) == 0,
            f"--expert-model-parallel-size {ep} x --expert-tensor-parallel-size "
            f"{args.expert_tensor_parallel_size or tp} must divide DP x TP = {dp * tp}",
        )
        _check(
            tp == 1 or args.sequence_parallel,
            "MoE with --tensor-model-parallel-size > 1 needs --sequence-parallel (as in Megatron-LM)",
        )
    else:
        _check(ep == 1, "--expert-model-parallel-size > 1 needs --num-experts")
    return layout


def _validate_moe_communication(args: argparse.Namespace, world_size: int) -> None:
    """Dispatcher topology and MoE-aware recomputation flags."""
    rpn = args.moe_ranks_per_node
    if rpn is not None:
        _check(rpn >= 1, f"--moe-ranks-per-node must be >= 1, got {rpn}")
        _check(world_size % rpn == 0, f"--moe-ranks-per-node {rpn} does not divide the world size {world_size}")
    if args.moe_recompute == "moe_aware":
        _check(args.num_experts is not None, "--moe-recompute moe_aware needs --num-experts")
        _check(
            args.recompute_granularity != "full" or args.moe_token_dispatcher_type != "allgather",
            "--recompute-granularity full --moe-recompute moe_aware replays the all-to-alls: choose an "
            "all-to-all --moe-token-dispatcher-type (alltoall, hierarchical, hierarchical_2d, auto)",
        )


def check_flag_values(args: argparse.Namespace, train_length: bool = True) -> None:
    """Single flags with values that would crash later (ZeroDivisionError, megatron's asserts) or
    silently do something else than asked. Checked first, before any flag is used in arithmetic.

    The required flags come first (``train_length``: --train-iters or --train-samples among them;
    finetune_glue.py derives the length from --epochs after this check)."""
    check_required(args, train_length)
    for flag in ("num_layers", "hidden_size", "num_attention_heads", "micro_batch_size", "seq_length"):
        value = getattr(args, flag)
        _check(value >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    for flag in ("global_batch_size", "ffn_hidden_size", "moe_ffn_hidden_size", "save_interval", "exit_interval",
                 "lr_decay_iters", "max_position_embeddings", "train_iters", "train_samples"):
        value = getattr(args, flag)
        _check(value is None or value >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    _check(
        args.hidden_size % args.num_attention_heads == 0,
        f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {args.num_attention_heads}",
    )
    _check(args.lr > 0, f"--lr must be > 0, got {args.lr} (nothing would train)")
    _check(args.min_lr >= 0, f"--min-lr must be >= 0, got {args.min_lr}")
    _check(args.min_lr <= args.lr, f"--min-lr {args.min_lr} is larger than --lr {args.lr}")
    for flag in ("lr_warmup_iters", "clip_grad", "init_method_std", "weight_decay", "eval_iters"):
        value = getattr(args, flag)
        _check(value >= 0, f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    _check(
        args.max_skipped_iters >= 1,
        f"--max-skipped-iters must be >= 1 (consecutive non-finite steps before stopping), got {args.max_skipped_iters}",
    )
    for flag in ("hidden_dropout", "attention_dropout"):
        value = getattr(args, flag)
        _check(0 <= value < 1, f"--{flag.replace('_', '-')} must be in [0, 1), got {value}")
    _check(not args.exit_signal_handler or args.save, "--exit-signal-handler needs --save DIR (it saves before exiting)")
    _check(
        args.exit_duration_in_mins is None or args.exit_duration_in_mins > 0,
        f"--exit-duration-in-mins must be > 0, got {args.exit_duration_in_mins}",
    )
    _check(args.norm_epsilon > 0, f"--norm-epsilon must be > 0, got {args.norm_epsilon}")


def _validate_batch(args: argparse.Namespace, layout: ParallelLayout, world_size: int) -> None:
    from megatron_evomoe.device import use_transformer_engine

    dp = layout.data_parallel_size(world_size)
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    _check(
        args.global_batch_size % (args.micro_batch_size * dp) == 0,
        f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
        f"{args.micro_batch_size} x data-parallel size {dp}",
    )
    args.train_iters = resolve_train_iters(args.train_iters, args.train_samples, args.global_batch_size)
    args.lr_warmup_iters = warmup_iters(
        args.lr_warmup_iters, args.lr_warmup_fraction, args.lr_decay_iters or args.train_iters
    )
    for flag in ("micro_batch_size", "train_iters", "seq_length", "log_interval", "eval_interval"):
        _check(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1")
    _check(args.log_routing_probe >= 0, "--log-routing-probe must be >= 0")
    if args.save_interval is not None:
        _check(args.save is not None, "--save-interval needs --save DIR")
    _validate_checkpoint_flags(args)
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    _check(
        args.max_position_embeddings >= args.seq_length,
        f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {args.seq_length}",
    )
    _check(not (args.bf16 and args.fp16), "--bf16 and --fp16 are mutually exclusive")
    _check(
        not (getattr(args, "reset_attention_mask", False) and use_transformer_engine()),
        "--reset-attention-mask needs the local attention (SDPA); Transformer Engine's causal attention "
        "here takes no per-document mask",
    )


def _validate_checkpoint_flags(args: argparse.Namespace) -> None:
    if args.save_retain is not None:
        _check(args.save is not None, "--save-retain needs --save DIR")
        _check(args.save_retain >= 1, f"--save-retain must be >= 1, got {args.save_retain}")
    if args.ckpt_step is not None:
        _check(args.load is not None, "--ckpt-step needs --load DIR")
        _check(args.ckpt_step >= 0, f"--ckpt-step must be >= 0, got {args.ckpt_step}")
    _check(
        not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
        "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are mutually exclusive",
    )


def _model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    moe = args.num_experts is not None
    topk = selected_topk(args)
    if moe:
        _check(1 <= topk <= args.num_experts, f"--moe-router-topk {topk} must be in [1, --num-experts]")
        _check(
            args.moe_expert_capacity_factor is None or args.moe_expert_capacity_factor > 0,
            "--moe-expert-capacity-factor must be > 0",
        )
    router = router_config_from_args(
        args, RunShape(args.train_iters, args.micro_batch_size * args.seq_length, args.use_distributed_optimizer)
    )
    dispatch = DispatchOptions(
        dispatcher_type=args.moe_token_dispatcher_type,
        ranks_per_node=args.moe_ranks_per_node,
        alpha_intra=args.moe_a2a_alpha_intra,
        beta_intra=args.moe_a2a_beta_intra,
        alpha_inter=args.moe_a2a_alpha_inter,
        beta_inter=args.moe_a2a_beta_inter,
        calibrate=args.moe_a2a_calibrate,
    )
    try:
        return _megatron_model_config(args, vocab_size, router, dispatch)
    except (ValueError, AssertionError) as exc:  # megatron-core's own checks of the values above
        raise InputError(f"invalid model configuration: {' '.join(str(exc).split())}") from exc


def _megatron_model_config(args: argparse.Namespace, vocab_size: int, router, dispatch) -> ModelConfig:
    """megatron-core's TransformerConfig (+ our MoE options) from the validated flags."""
    import torch
    import torch.nn.functional as F

    from megatron_evomoe.config import ModelConfig, default_grouped_gemm
    from megatron_evomoe.device import device_is_cuda

    on_gpu = device_is_cuda()
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    ffn = args.ffn_hidden_size or 4 * args.hidden_size
    moe = args.num_experts is not None
    return ModelConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=ffn,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        layernorm_epsilon=args.norm_epsilon,
        activation_func=F.gelu,
        add_bias_linear=False,
        bf16=args.bf16,
        fp16=args.fp16,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        expert_model_parallel_size=args.expert_model_parallel_size,
        expert_tensor_parallel_size=args.expert_tensor_parallel_size,
        sequence_parallel=args.sequence_parallel and args.tensor_model_parallel_size > 1,
        use_cpu_initialization=not on_gpu,
        perform_initialization=True,
        gradient_accumulation_fusion=False,
        bias_activation_fusion=False,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        batch_p2p_sync=on_gpu,
        deallocate_pipeline_outputs=True,
        cuda_graph_scope=[],  # no CUDA graphs (the default "full" only triggers a deprecation warning)
        recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method if args.recompute_granularity == "full" else None,
        recompute_num_layers=args.recompute_num_layers if args.recompute_granularity == "full" else None,
        num_moe_experts=args.num_experts,
        moe_ffn_hidden_size=(args.moe_ffn_hidden_size or ffn) if moe else None,
        moe_layer_freq=args.moe_layer_freq,
        moe_router_topk=router.topk,
        moe_router_pre_softmax=True,  # megatron's own router is unused; this only satisfies its checks
        moe_aux_loss_coeff=0.0,  # ours lives in moe_router.aux_loss_coeff
        # Read by megatron's finalize_model_grads only, which then resets the routers' global
        # balance counts once per step (moe/load_balancing.py); our routers read moe_router.
        moe_router_load_balancing_type=router.load_balancing_type,
        moe_expert_capacity_factor=args.moe_expert_capacity_factor,
        moe_token_drop_policy=args.moe_token_drop_policy,
        moe_grouped_gemm=(
            default_grouped_gemm(on_gpu, args.bf16 or args.fp16) if args.moe_grouped_gemm is None else args.moe_grouped_gemm
        ),
        moe_router_type=args.moe_router_type,
        moe_router=router,
        moe_dispatch=dispatch,
        moe_recompute=args.moe_recompute,
        vocab_size=vocab_size,
        max_position_embeddings=args.max_position_embeddings,
        seed=args.seed,
    )


def build_run_config(args: argparse.Namespace, vocab_size: int, world_size: Optional[int] = None) -> RunConfig:
    """Validate ``args`` and build every config. ``vocab_size`` is the padded vocabulary."""
    from megatron.core.distributed import DistributedDataParallelConfig
    from megatron.core.optimizer import OptimizerConfig

    from megatron_evomoe.config import LRScheduleConfig, TrainingConfig
    from megatron_evomoe.data.gpt_dataset import data_config_from_args, gives_data_path

    world_size = world_size or world_size_from_env()
    check_flag_values(args)
    layout = _validate_parallel(args, world_size)
    _validate_moe_communication(args, world_size)
    _validate_batch(args, layout, world_size)
    args.moe_layer_freq = parse_moe_layer_freq(args.moe_layer_freq)
    moe_layer_pattern(args.moe_layer_freq, args.num_layers)  # a list names every layer
    model = _model_config(args, vocab_size)
    optimizer = OptimizerConfig(
        optimizer="adam",
        lr=args.lr,
        min_lr=args.min_lr,
        weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1,
        adam_beta2=args.adam_beta2,
        adam_eps=args.adam_eps,
        clip_grad=args.clip_grad,
        bf16=args.bf16,
        fp16=args.fp16,
        params_dtype=model.params_dtype,
        loss_scale=args.loss_scale,
        initial_loss_scale=args.initial_loss_scale,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    ddp = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=False,
        use_distributed_optimizer=args.use_distributed_optimizer,
    )
    training = TrainingConfig(
        train_iters=args.train_iters,
        micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size,
        seq_length=args.seq_length,
        eval_interval=args.eval_interval,
        eval_iters=args.eval_iters,
        eval_as_served=args.eval_as_served,
        log_interval=args.log_interval,
        save=args.save,
        save_interval=args.save_interval,
        load=args.load,
        finetune=args.finetune,
        no_load_optim=args.no_load_optim,
        no_load_rng=args.no_load_rng,
        ckpt_step=args.ckpt_step,
        save_retain=args.save_retain,
        allow_nonfinite_load=args.allow_nonfinite_load,
        tensorboard_dir=args.tensorboard_dir,
        log_json=args.log_json,
        log_routing_probe=args.log_routing_probe,
        num_workers=args.num_workers,
        log_moe_diagnostics=args.log_moe_diagnostics,
        seed=args.seed,
        max_skipped_iters=args.max_skipped_iters,
        exit_interval=args.exit_interval,
        exit_signal_handler=args.exit_signal_handler,
        exit_duration_in_mins=args.exit_duration_in_mins,
        moe_per_layer_logging=args.moe_per_layer_logging,
        dry_run=args.dry_run,
        lr_schedule=LRScheduleConfig(
            lr=args.lr,
            min_lr=args.min_lr,
            decay_style=args.lr_decay_style,
            decay_power=args.lr_decay_power,
            warmup_iters=args.lr_warmup_iters,
            decay_iters=args.lr_decay_iters,
            weight_decay=args.weight_decay,
            override_opt_param_scheduler=args.override_opt_param_scheduler,
            use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        ),
    )
    return RunConfig(
        model, optimizer, ddp, training, layout, world_size,
        data=data_config_from_args(args) if gives_data_path(args) else None,
        bert=bert_options_from_args(args),
        distributed_timeout_minutes=args.distributed_timeout_minutes,
        flags=dict(vars(args)),
    )


def parse_args(
    argv: Optional[Sequence[str]] = None,
    description: str = "",
    extra_args_provider: Optional[Callable[[argparse.ArgumentParser], None]] = None,
    defaults: Optional[dict] = None,
) -> argparse.Namespace:
    """Parse the command line (``defaults`` override parser defaults, e.g. per script)."""
    parser = build_parser(description, extra_args_provider)
    if defaults:
        parser.set_defaults(**defaults)
    return parser.parse_args(argv)


def architecture_meta(model: ModelConfig) -> dict:
    """Fields a checkpoint must agree on with the model it is loaded into: every flag that changes
    a parameter's shape (keys are the flags' names; a router's own sizes only for that router)."""
    meta = {
        "num_layers": model.num_layers,
        "hidden_size": model.hidden_size,
        "num_attention_heads": model.num_attention_heads,
        "ffn_hidden_size": model.ffn_hidden_size,
        "num_experts": model.num_moe_experts,
        "moe_ffn_hidden_size": model.moe_ffn_hidden_size,
        "moe_layer_freq": model.moe_layer_freq,
        "moe_router_type": model.moe_router_type,
        "padded_vocab_size": model.vocab_size,
        "max_position_embeddings": model.max_position_embeddings,
    }
    if model.num_moe_experts:
        meta.update(router_class(model.moe_router_type).architecture_meta(model))
    return meta


def precision_name(model: ModelConfig) -> str:
    """'bf16', 'fp16' or 'fp32': the flag the optimizer state was built for."""
    return "bf16" if model.bf16 else "fp16" if model.fp16 else "fp32"

