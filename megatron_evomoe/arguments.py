"""Command-line flags of the training scripts (Megatron-LM's names and groups) and their parser.

Every flag of the training scripts is defined here (data and tokenizer flags in ``data/flags.py``,
shared with the preprocessing tools; the router flags are generated from each router's ``Config`` in
``router_arguments.py``). What the flags mean together is checked in ``flag_checks.py`` and turned
into configs in ``run_config.py`` (:func:`~megatron_evomoe.run_config.build_run_config`).

This module imports neither torch nor megatron-core (nor does anything it imports), so ``--help``
and a mistyped flag answer in a fraction of a second (``tests/test_help.py`` keeps it so).
"""

from __future__ import annotations

import argparse
from typing import Callable, Optional, Sequence

from megatron_evomoe.data.flags import add_data_args, add_tokenizer_args
from megatron_evomoe.help_format import HelpFormatter
from megatron_evomoe.moe.dispatch import available_dispatchers
from megatron_evomoe.moe.dispatch.options import DispatchOptions
from megatron_evomoe.router_arguments import add_router_args


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
