"""Validation of the parsed flags, before any config is built: single values first
(:func:`check_flag_values`), then the combinations that need the world size (:func:`validate_run_flags`).

Invalid input raises :class:`~megatron_evomoe.errors.InputError` with one line that names the flags
involved. The rules that every script shares (required flags, training length, warm-up) live in
``flag_rules.py``; this module applies them. torch and megatron-core are imported inside the
functions that need them, once the flags have parsed.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_rules import check_required, resolve_train_iters, warmup_iters

if TYPE_CHECKING:
    from megatron_evomoe.initialize import ParallelLayout


def check(condition: bool, message: str) -> None:
    """Raise :class:`InputError` with ``message`` (one line naming the flags) unless ``condition``."""
    if not condition:
        raise InputError(message)


def _validate_parallel(args: argparse.Namespace, world_size: int) -> ParallelLayout:
    from megatron_evomoe.initialize import ParallelLayout

    tp, pp, ep = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.expert_model_parallel_size
    layout = ParallelLayout(tp, pp, ep, args.expert_tensor_parallel_size)
    layout.validate(world_size)
    check(
        args.num_attention_heads % tp == 0,
        f"--num-attention-heads {args.num_attention_heads} is not divisible by --tensor-model-parallel-size {tp}",
    )
    check(
        args.num_layers % pp == 0,
        f"--num-layers {args.num_layers} is not divisible by --pipeline-model-parallel-size {pp}",
    )
    if args.num_experts is not None:
        check(args.num_experts >= 1, f"--num-experts must be >= 1, got {args.num_experts}")
        check(
            args.num_experts % ep == 0,
            f"--num-experts {args.num_experts} is not divisible by --expert-model-parallel-size {ep}",
        )
        dp = layout.data_parallel_size(world_size)
        check(
            (dp * tp) % (ep * (args.expert_tensor_parallel_size or tp)) == 0,
            f"--expert-model-parallel-size {ep} x --expert-tensor-parallel-size "
            f"{args.expert_tensor_parallel_size or tp} must divide DP x TP = {dp * tp}",
        )
        check(
            tp == 1 or args.sequence_parallel,
            "MoE with --tensor-model-parallel-size > 1 needs --sequence-parallel (as in Megatron-LM)",
        )
    else:
        check(ep == 1, "--expert-model-parallel-size > 1 needs --num-experts")
    return layout


def _validate_moe_communication(args: argparse.Namespace, world_size: int) -> None:
    """Dispatcher topology and MoE-aware recomputation flags."""
    rpn = args.moe_ranks_per_node
    if rpn is not None:
        check(rpn >= 1, f"--moe-ranks-per-node must be >= 1, got {rpn}")
        check(world_size % rpn == 0, f"--moe-ranks-per-node {rpn} does not divide the world size {world_size}")
    if args.moe_recompute == "moe_aware":
        check(args.num_experts is not None, "--moe-recompute moe_aware needs --num-experts")
        check(
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
        check(value >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    for flag in ("global_batch_size", "ffn_hidden_size", "moe_ffn_hidden_size", "save_interval", "exit_interval",
                 "lr_decay_iters", "max_position_embeddings", "train_iters", "train_samples"):
        value = getattr(args, flag)
        check(value is None or value >= 1, f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    check(
        args.hidden_size % args.num_attention_heads == 0,
        f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads {args.num_attention_heads}",
    )
    check(args.lr > 0, f"--lr must be > 0, got {args.lr} (nothing would train)")
    check(args.min_lr >= 0, f"--min-lr must be >= 0, got {args.min_lr}")
    check(args.min_lr <= args.lr, f"--min-lr {args.min_lr} is larger than --lr {args.lr}")
    for flag in ("lr_warmup_iters", "clip_grad", "init_method_std", "weight_decay", "eval_iters"):
        value = getattr(args, flag)
        check(value >= 0, f"--{flag.replace('_', '-')} must be >= 0, got {value}")
    check(
        args.max_skipped_iters >= 1,
        f"--max-skipped-iters must be >= 1 (consecutive non-finite steps before stopping), got {args.max_skipped_iters}",
    )
    for flag in ("hidden_dropout", "attention_dropout"):
        value = getattr(args, flag)
        check(0 <= value < 1, f"--{flag.replace('_', '-')} must be in [0, 1), got {value}")
    check(not args.exit_signal_handler or args.save, "--exit-signal-handler needs --save DIR (it saves before exiting)")
    check(
        args.exit_duration_in_mins is None or args.exit_duration_in_mins > 0,
        f"--exit-duration-in-mins must be > 0, got {args.exit_duration_in_mins}",
    )
    check(args.norm_epsilon > 0, f"--norm-epsilon must be > 0, got {args.norm_epsilon}")


def _validate_batch(args: argparse.Namespace, layout: ParallelLayout, world_size: int) -> None:
    from megatron_evomoe.device import use_transformer_engine

    dp = layout.data_parallel_size(world_size)
    if args.global_batch_size is None:
        args.global_batch_size = args.micro_batch_size * dp
    check(
        args.global_batch_size % (args.micro_batch_size * dp) == 0,
        f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
        f"{args.micro_batch_size} x data-parallel size {dp}",
    )
    args.train_iters = resolve_train_iters(args.train_iters, args.train_samples, args.global_batch_size)
    args.lr_warmup_iters = warmup_iters(
        args.lr_warmup_iters, args.lr_warmup_fraction, args.lr_decay_iters or args.train_iters
    )
    for flag in ("micro_batch_size", "train_iters", "seq_length", "log_interval", "eval_interval"):
        check(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be >= 1")
    check(args.log_routing_probe >= 0, "--log-routing-probe must be >= 0")
    if args.save_interval is not None:
        check(args.save is not None, "--save-interval needs --save DIR")
    _validate_checkpoint_flags(args)
    if args.max_position_embeddings is None:
        args.max_position_embeddings = args.seq_length
    check(
        args.max_position_embeddings >= args.seq_length,
        f"--max-position-embeddings {args.max_position_embeddings} < --seq-length {args.seq_length}",
    )
    check(not (args.bf16 and args.fp16), "--bf16 and --fp16 are mutually exclusive")
    check(
        not (getattr(args, "reset_attention_mask", False) and use_transformer_engine()),
        "--reset-attention-mask needs the local attention (SDPA); Transformer Engine's causal attention "
        "here takes no per-document mask",
    )


def _validate_checkpoint_flags(args: argparse.Namespace) -> None:
    if args.save_retain is not None:
        check(args.save is not None, "--save-retain needs --save DIR")
        check(args.save_retain >= 1, f"--save-retain must be >= 1, got {args.save_retain}")
    if args.ckpt_step is not None:
        check(args.load is not None, "--ckpt-step needs --load DIR")
        check(args.ckpt_step >= 0, f"--ckpt-step must be >= 0, got {args.ckpt_step}")
    check(
        not (args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler),
        "--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler are mutually exclusive",
    )


def validate_run_flags(args: argparse.Namespace, world_size: int) -> ParallelLayout:
    """Every check of ``args`` before the configs are built, in order; fills the derived flags
    (--global-batch-size, --train-iters from --train-samples, warm-up iterations,
    --max-position-embeddings). Returns the parallel layout."""
    check_flag_values(args)
    layout = _validate_parallel(args, world_size)
    _validate_moe_communication(args, world_size)
    _validate_batch(args, layout, world_size)
    return layout
