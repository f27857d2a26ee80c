"""Training FLOPs actually computed: attention + dense layers + only the experts tokens visited.

Counted per token with 2 FLOPs per multiply-add; backward costs twice the forward, so a training
step costs 3x its forward FLOPs. (Activation recomputation re-runs forward work; that is not charged
here, so numbers compare across recompute settings: they are model FLOPs.)

Per layer and token: QKV and output projections 2*h*(h + 2*kv) + 2*h*h, attention scores and the
weighted sum 2 * 2*s*h (full s x s, as Megatron-LM counts), a dense FFN 2 * 2*h*f. An MoE layer
charges its router's gate FLOPs per token (``Router.gate_flops``: 2*h*E for a linear gate) plus 2 * 2*h*f_moe per (token, expert) pair actually computed: in
EvoMoE's stage 1 one shared FFN per token and no router; in the DTS phase the experts above the
threshold. The LM head adds 2*h*V per token.
"""

from __future__ import annotations

from typing import Sequence

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.models.layer_specs import moe_layer_pattern


def forward_flops_dense_part(config: ModelConfig, seq_length: int, num_tokens: float) -> float:
    """Forward FLOPs of everything except the MoE layers' experts and routers."""
    h = config.hidden_size
    kv = config.kv_channels * config.num_query_groups
    attention = 2 * h * (h + 2 * kv) + 2 * h * h + 2 * 2 * seq_length * h
    dense_ffn = 2 * 2 * h * config.ffn_hidden_size
    pattern = moe_layer_pattern(config)
    num_dense = sum(1 for is_moe in pattern if not is_moe)
    head = 2 * h * config.vocab_size
    return num_tokens * (config.num_layers * attention + num_dense * dense_ffn + head)


def forward_flops_moe(
    config: ModelConfig, num_tokens: float, assignments_per_layer: Sequence[float], gate_flops_per_token: float
) -> float:
    """Forward FLOPs of the MoE layers given (token, expert) pairs computed in each layer.

    Args:
        num_tokens: tokens that went through each layer.
        assignments_per_layer: computed (token, expert) pairs of each MoE layer.
        gate_flops_per_token: the router's gate FLOPs per token in this step (``Router.gate_flops``:
            2*h*E for a linear gate, 0 for hash routing and for EvoMoE's shared-expert stage).
    """
    h = config.hidden_size
    expert_ffn = 2 * 2 * h * (config.moe_ffn_hidden_size or config.ffn_hidden_size)
    return sum(pairs * expert_ffn + num_tokens * gate_flops_per_token for pairs in assignments_per_layer)


def training_step_flops(
    config: ModelConfig,
    seq_length: int,
    num_tokens: float,
    assignments_per_layer: Sequence[float],
    gate_flops_per_token: float,
) -> float:
    """Forward + backward FLOPs of one optimizer step over ``num_tokens`` tokens (all ranks)."""
    forward = forward_flops_dense_part(config, seq_length, num_tokens)
    forward += forward_flops_moe(config, num_tokens, assignments_per_layer, gate_flops_per_token)
    return 3.0 * forward
