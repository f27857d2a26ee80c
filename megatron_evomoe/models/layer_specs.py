"""Layer specs: megatron-core TransformerLayer with our attention fallback and our MoE layer.

``local`` (CPU, or GPU without Transformer Engine): megatron's Column/RowParallelLinear, torch
LayerNorm and :class:`SDPACoreAttention`. ``te`` (GPU with Transformer Engine): TE's fused
layernorm-linear, TE attention and TE expert GEMMs. An MoE layer every ``moe_layer_freq`` layers
(layer 0, freq, 2*freq, ... as megatron-core counts), dense MLP elsewhere.
"""

from __future__ import annotations

from typing import List, Optional

from megatron.core.models.backends import BackendSpecProvider, LocalSpecProvider
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoESubmodules
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import (
    TransformerBlockSubmodules,
    get_num_layers_to_build,
)
from megatron.core.transformer.transformer_layer import (
    TransformerLayer,
    TransformerLayerSubmodules,
    get_transformer_layer_offset,
)

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.models.attention import SDPACoreAttention
from megatron_evomoe.models.norm import LayerNorm
from megatron_evomoe.moe.experts import GroupedGemmExperts, OutputScaledSequentialMLP
from megatron_evomoe.moe.layer import MoELayer
from megatron_evomoe.moe.routers import router_class
from megatron_evomoe.moe_layer_freq import moe_layer_pattern as pattern_of_freq


class _LocalBackend(LocalSpecProvider):
    """megatron's local (no TE) modules, with a LayerNorm that supports sequence parallelism."""

    def layer_norm(self, rms_norm: bool = False, for_qk: bool = False) -> type:
        if rms_norm:
            raise ValueError("RMSNorm is not supported by the local spec")
        return LayerNorm


def _backend(use_te: bool) -> BackendSpecProvider:
    if use_te:
        from megatron.core.extensions.transformer_engine_spec_provider import TESpecProvider

        return TESpecProvider()
    return _LocalBackend()


def moe_layer_pattern(config: ModelConfig) -> List[bool]:
    """True for the layers (0-based, global) whose FFN is an MoE layer."""
    if not config.num_moe_experts:
        return [False] * config.num_layers
    return pattern_of_freq(config.moe_layer_freq, config.num_layers)


def moe_mlp_spec(config: ModelConfig, use_te: bool) -> ModuleSpec:
    """Our MoELayer with megatron expert MLPs and the configured router."""
    backend = _backend(use_te)
    expert_module, expert_submodules = backend.grouped_mlp_modules(
        bool(config.moe_grouped_gemm and use_te), False
    )
    if expert_module is SequentialMLP:
        # Same experts, gate weight applied to their [m, h] outputs: less work and activation memory;
        # with --moe-grouped-gemm (no TE) all experts in two torch._grouped_mm calls.
        expert_module = GroupedGemmExperts if config.moe_grouped_gemm else OutputScaledSequentialMLP
    experts = ModuleSpec(module=expert_module, submodules=expert_submodules)
    shared = None
    if config.moe_router.needs_shared_expert():
        shared = ModuleSpec(
            module=MLP,
            submodules=MLPSubmodules(
                linear_fc1=backend.column_parallel_linear(), linear_fc2=backend.row_parallel_linear()
            ),
        )
    return ModuleSpec(
        module=MoELayer,
        submodules=MoESubmodules(
            experts=experts, shared_experts=shared, router=router_class(config.moe_router_type)
        ),
    )


def dense_mlp_spec(use_te: bool) -> ModuleSpec:
    """megatron-core's dense MLP."""
    backend = _backend(use_te)
    if use_te:
        fc1 = backend.column_parallel_layer_norm_linear()
    else:
        fc1 = backend.column_parallel_linear()
    return ModuleSpec(
        module=MLP,
        submodules=MLPSubmodules(linear_fc1=fc1, linear_fc2=backend.row_parallel_linear()),
    )


def transformer_layer_spec(
    config: ModelConfig, is_moe: bool, use_te: bool, attn_mask_type: AttnMaskType = AttnMaskType.causal
) -> ModuleSpec:
    """One pre-LN transformer layer (attention + dense MLP or MoE)."""
    backend = _backend(use_te)
    if use_te:
        qkv = backend.column_parallel_layer_norm_linear()
        core_attention = backend.core_attention()
        input_layernorm = IdentityOp  # fused into the QKV linear
    else:
        qkv = backend.column_parallel_linear()
        core_attention = SDPACoreAttention
        input_layernorm = backend.layer_norm()
    mlp = moe_mlp_spec(config, use_te) if is_moe else dense_mlp_spec(use_te)
    fused_dense_ln = use_te and not is_moe
    keys_map = {}
    if not use_te:
        # Same checkpoint keys as the TE spec, where the layernorms live inside the linears.
        keys_map["input_layernorm."] = "self_attention.linear_qkv.layer_norm_"
        if not is_moe:
            keys_map["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=input_layernorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": attn_mask_type},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=qkv,
                    core_attention=core_attention,
                    linear_proj=backend.row_parallel_linear(),
                    q_layernorm=IdentityOp,
                    k_layernorm=IdentityOp,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=IdentityOp if fused_dense_ln else backend.layer_norm(),
            mlp=mlp,
            mlp_bda=get_bias_dropout_add,
            sharded_state_dict_keys_map=keys_map,
        ),
    )


def decoder_block_spec(
    config: ModelConfig,
    use_te: bool,
    attn_mask_type: AttnMaskType = AttnMaskType.causal,
    vp_stage: Optional[int] = None,
) -> TransformerBlockSubmodules:
    """The layers of this pipeline stage, MoE where :func:`moe_layer_pattern` says so."""
    pattern = moe_layer_pattern(config)
    specs = [transformer_layer_spec(config, is_moe, use_te, attn_mask_type) for is_moe in pattern]
    offset = get_transformer_layer_offset(config, vp_stage=vp_stage)
    count = get_num_layers_to_build(config, vp_stage=vp_stage)
    final_norm = _backend(use_te).layer_norm()
    return TransformerBlockSubmodules(layer_specs=specs[offset : offset + count], layer_norm=final_norm)
