"""Our one-process GPT-MoE as the config and tensors of ``modeling_evomoe_gpt.py``.

Read from the modules (not from state-dict key strings), so what is exported is what the model
computes: megatron's fused QKV weight keeps its per-head (q, k, v) layout, which the modeling file
splits the same way; each MoE layer's gate is its router's :meth:`serving_gate` in the routing
state; an EvoMoE layer still in stage 1 (every token through the shared expert) is exported as
that dense FFN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.layer import MoELayer
from megatron_evomoe.moe.router_config import RoutingState

DENSE, MOE, SHARED = "dense", "moe", "shared"
"""Layer types of the exported config: megatron's MLP, our MoE layer, EvoMoE's stage-1 shared expert."""


@dataclass
class HFModel:
    """The exported model: ``config.json`` fields and the tensors of ``model.safetensors``."""

    config: Dict[str, Any]
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)


def check_exportable(config: ModelConfig) -> None:
    """The architecture choices the modeling file implements (InputError naming the one that differs)."""
    heads = config.num_attention_heads
    problems = [
        (config.add_bias_linear or config.add_qkv_bias, "linear biases"),
        (config.normalization != "LayerNorm", f"--normalization {config.normalization}"),
        (config.activation_func is not F.gelu or config.gated_linear_unit, "an activation other than GeLU"),
        ((config.num_query_groups or heads) != heads, "grouped-query attention"),
        (config.kv_channels * heads != config.hidden_size, "kv_channels x heads != hidden size"),
    ]
    for failed, what in problems:
        if failed:
            raise InputError(f"the Hugging Face export does not support {what}")


def _copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float32).contiguous().clone()


def _layer_norm(prefix: str, norm: torch.nn.Module, tensors: dict) -> None:
    tensors[f"{prefix}.weight"] = _copy(norm.weight)
    tensors[f"{prefix}.bias"] = _copy(norm.bias)


def _mlp(prefix: str, mlp: torch.nn.Module, tensors: dict) -> None:
    """megatron's MLP (fc1, fc2; no biases) -> ``prefix.fc1/fc2.weight``."""
    tensors[f"{prefix}.fc1.weight"] = _copy(mlp.linear_fc1.weight)
    tensors[f"{prefix}.fc2.weight"] = _copy(mlp.linear_fc2.weight)


def _moe(prefix: str, layer: MoELayer, state: RoutingState, router_type: str, tensors: dict) -> Optional[dict]:
    """The MoE layer's gate spec (None in the shared-expert stage: exported as a dense FFN)."""
    if layer.dense_phase:
        _mlp(f"{prefix}.mlp", layer.shared_expert, tensors)
        return None
    gate = layer.router.serving_gate(state)
    if gate is None:
        raise InputError(
            f"router {router_type!r} in routing state {state.phase!r} has no gate the Hugging Face export "
            "can write (moe/serving_gate.py)"
        )
    for name, tensor in gate.tensors.items():
        tensors[f"{prefix}.mlp.gate.{name}"] = tensor
    for index, expert in enumerate(layer.experts.local_experts):
        _mlp(f"{prefix}.mlp.experts.{index}", expert, tensors)
    return {"kind": gate.kind, **gate.options}


def convert_gpt(model: torch.nn.Module, config: ModelConfig, state: Optional[RoutingState]) -> HFModel:
    """``model``: our GPTModel on one process (TP=PP=EP=1), its MoE layers in ``state``."""
    check_exportable(config)
    tensors: Dict[str, torch.Tensor] = {
        "transformer.wte.weight": _copy(model.embedding.word_embeddings.weight),
        "transformer.wpe.weight": _copy(model.embedding.position_embeddings.weight),
    }
    mlp_types: List[str] = []
    gates: List[Optional[dict]] = []
    for index, layer in enumerate(model.decoder.layers):
        prefix = f"transformer.layers.{index}"
        _layer_norm(f"{prefix}.ln1", layer.input_layernorm, tensors)
        tensors[f"{prefix}.attn.qkv.weight"] = _copy(layer.self_attention.linear_qkv.weight)
        tensors[f"{prefix}.attn.proj.weight"] = _copy(layer.self_attention.linear_proj.weight)
        _layer_norm(f"{prefix}.ln2", layer.pre_mlp_layernorm, tensors)
        if isinstance(layer.mlp, MoELayer):
            gate = _moe(prefix, layer.mlp, state, config.moe_router_type, tensors)
            mlp_types.append(SHARED if gate is None else MOE)
            gates.append(gate)
        else:
            _mlp(f"{prefix}.mlp", layer.mlp, tensors)
            mlp_types.append(DENSE)
            gates.append(None)
    _layer_norm("transformer.ln_f", model.decoder.final_layernorm, tensors)
    hf_config = {
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.ffn_hidden_size,
        "moe_intermediate_size": config.moe_ffn_hidden_size or config.ffn_hidden_size,
        "num_experts": config.num_moe_experts or 0,
        "max_position_embeddings": config.max_position_embeddings,
        "layer_norm_epsilon": config.layernorm_epsilon,
        "mlp_types": mlp_types,
        "moe_gates": gates,
    }
    return HFModel(hf_config, tensors)
