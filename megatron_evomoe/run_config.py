"""The validated configuration of a run, built from the parsed flags (:func:`build_run_config`).

``build_run_config`` is the only place that checks flag combinations (through ``flag_checks.py``)
and fills megatron-core's configs; invalid input raises :class:`~megatron_evomoe.errors.InputError`
with one line that names the flags involved. torch and megatron-core are imported inside the
functions that build their configs, so importing this module stays light.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Optional

from megatron_evomoe.bert_arguments import BertOptions, bert_options_from_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_checks import check, validate_run_flags
from megatron_evomoe.moe.dispatch.options import DispatchOptions
from megatron_evomoe.moe.router_config import RunShape
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.moe_layer_freq import moe_layer_pattern, parse_moe_layer_freq
from megatron_evomoe.router_arguments import router_config_from_args, selected_topk

if TYPE_CHECKING:  # imported where used: importing this module must not load torch or megatron-core
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


def world_size_from_env() -> int:
    """WORLD_SIZE set by torchrun (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _model_config(args: argparse.Namespace, vocab_size: int) -> ModelConfig:
    moe = args.num_experts is not None
    topk = selected_topk(args)
    if moe:
        check(1 <= topk <= args.num_experts, f"--moe-router-topk {topk} must be in [1, --num-experts]")
        check(
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
    layout = validate_run_flags(args, world_size)
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

