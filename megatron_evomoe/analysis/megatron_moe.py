"""megatron-core 0.16.1's own ``MoELayer``, built from our config, to time it beside ours.

The reference the MoE-layer benchmark compares against (``--compare megatron-core``): megatron's
``MoELayer`` with its all-gather token dispatcher, ``SequentialMLP`` experts (megatron's MLP per
expert, gate weight applied to the FFN intermediate) and ``TopKRouter`` (softmax before top-k, as
Switch; the same balance-loss weight as our router). The CPU adaptation of its router is
``compat.megatron_topk_router``; nothing else of megatron's layer is changed.
"""

from __future__ import annotations

import dataclasses

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.moe.experts import SequentialMLP
from megatron.core.transformer.moe.moe_layer import MoELayer, MoESubmodules
from megatron.core.transformer.spec_utils import ModuleSpec, build_module

from megatron_evomoe import compat
from megatron_evomoe.config import ModelConfig
from megatron_evomoe.device import device_is_cuda


def megatron_moe_config(config: ModelConfig, topk: int) -> ModelConfig:
    """``config`` with megatron's router and dispatcher settings for a top-``topk`` layer."""
    return dataclasses.replace(
        config,
        moe_router_topk=topk,
        moe_router_pre_softmax=True,
        moe_router_load_balancing_type="aux_loss",
        moe_aux_loss_coeff=config.moe_router.aux_loss_coeff,
        moe_token_dispatcher_type="allgather",
        moe_grouped_gemm=False,
    )


def build_megatron_moe_layer(config: ModelConfig, topk: int) -> torch.nn.Module:
    """megatron-core's MoELayer (all-gather dispatcher, SequentialMLP, TopKRouter) for ``config``."""
    experts = ModuleSpec(
        module=SequentialMLP,
        submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
    )
    spec = ModuleSpec(
        module=MoELayer,
        submodules=MoESubmodules(experts=experts, router=compat.megatron_topk_router(device_is_cuda())),
    )
    layer = build_module(spec, config=megatron_moe_config(config, topk), layer_number=1)
    return layer
