"""What Megatron-LM's loader and converters read from a checkpoint's ``common.pt``, with its meanings.

Megatron-LM's ``generate_state_dict`` writes ``args`` (its argparse.Namespace), ``checkpoint_version``
(3.0), ``iteration`` and ``num_floating_point_operations_so_far`` beside the model; its
``load_args_from_checkpoint`` / ``check_checkpoint_args`` and the ``tools/checkpoint`` converters take
the architecture from ``args`` under Megatron-LM's attribute names. Our flags already have those names;
``args`` here is them plus the values Megatron-LM derives (``padded_vocab_size``, ``kv_channels``, ...)
and the fixed choices of this repository's models: learned absolute positions, LayerNorm, GeLU, tied
input/output embeddings, no linear biases.
"""

from __future__ import annotations

import argparse
from typing import Any, Dict

CHECKPOINT_VERSION = 3.0
"""Megatron-LM's current checkpoint version (tensor- and pipeline-parallel sizes stored separately)."""


def megatron_lm_args(run, state) -> argparse.Namespace:
    """This run's flags as Megatron-LM's ``args`` at the checkpoint of ``state``."""
    model = run.model
    args = argparse.Namespace(**vars(run.args))
    vars(args).update(
        # architecture, as Megatron-LM derives it
        num_layers=model.num_layers,
        hidden_size=model.hidden_size,
        ffn_hidden_size=model.ffn_hidden_size,
        num_attention_heads=model.num_attention_heads,
        kv_channels=model.kv_channels,
        group_query_attention=False,
        num_query_groups=model.num_query_groups or model.num_attention_heads,
        seq_length=run.training.seq_length,
        max_position_embeddings=model.max_position_embeddings,
        padded_vocab_size=model.vocab_size,
        position_embedding_type="learned_absolute",
        add_position_embedding=True,
        use_rotary_position_embeddings=False,
        normalization="LayerNorm",
        norm_epsilon=model.layernorm_epsilon,
        apply_layernorm_1p=False,
        add_bias_linear=model.add_bias_linear,
        add_qkv_bias=model.add_qkv_bias,
        swiglu=False,
        squared_relu=False,
        openai_gelu=False,
        untie_embeddings_and_output_weights=False,
        num_experts=model.num_moe_experts,
        moe_router_topk=model.moe_router_topk,
        moe_ffn_hidden_size=model.moe_ffn_hidden_size,
        moe_layer_freq=model.moe_layer_freq,
        params_dtype=model.params_dtype,
        # parallel layout the checkpoint was written under (dist checkpoints load under any other)
        tensor_model_parallel_size=run.layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=run.layout.pipeline_model_parallel_size,
        expert_model_parallel_size=run.layout.expert_model_parallel_size,
        virtual_pipeline_model_parallel_size=None,
        num_layers_per_virtual_pipeline_stage=None,
        world_size=run.world_size,
        data_parallel_size=run.data_parallel_size,
        ckpt_format="torch_dist",
        use_dist_ckpt=True,
        # where training stands
        iteration=state.iteration,
        consumed_train_samples=state.consumed_samples,
        consumed_valid_samples=0,
        num_floating_point_operations_so_far=state.floating_point_operations,
    )
    return args


def megatron_lm_common(run, state) -> Dict[str, Any]:
    """The top-level ``common.pt`` entries Megatron-LM writes and reads."""
    return {
        "args": megatron_lm_args(run, state),
        "checkpoint_version": CHECKPOINT_VERSION,
        "iteration": state.iteration,
        "num_floating_point_operations_so_far": state.floating_point_operations,
    }
