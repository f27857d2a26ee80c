"""Core attention on ``torch.nn.functional.scaled_dot_product_attention``.

megatron-core's local ``DotProductAttention`` needs CUDA (a global memory buffer on the current CUDA
device, a CUDA causal mask and the CUDA RNG). This module has the same constructor and forward
signature, so it slots into ``SelfAttentionSubmodules.core_attention`` of the local layer spec and
runs on CPU and GPU alike (SDPA picks flash / memory-efficient kernels on CUDA by itself).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.packed_seq_params import PackedSeqParams
from megatron.core.process_groups_config import ProcessGroupCollection
from megatron.core.tensor_parallel.utils import divide
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig


class SDPACoreAttention(MegatronModule):
    """Softmax(QK^T / sqrt(d)) V over the heads of this tensor-parallel rank.

    Inputs are megatron's ``[seq, batch, heads, head_dim]``; the output is ``[seq, batch, heads*head_dim]``.
    ``attention_mask`` follows megatron's convention: ``True`` marks a position that must NOT be
    attended to. Without a mask, causal masking comes from ``attn_mask_type``; a mask given to a
    causal layer is the full one (GPT's ``--reset-attention-mask``: causal within each document).
    """

    def __init__(
        self,
        config: TransformerConfig,
        layer_number: int,
        attn_mask_type: AttnMaskType,
        attention_type: str,
        attention_dropout: Optional[float] = None,
        softmax_scale: Optional[float] = None,
        cp_comm_type: Optional[str] = None,
        pg_collection: Optional[ProcessGroupCollection] = None,
    ):
        super().__init__(config=config)
        if config.context_parallel_size != 1:
            raise ValueError("SDPACoreAttention does not support context parallelism")
        if pg_collection is None:
            pg_collection = ProcessGroupCollection.use_mpu_process_groups(required_pgs=["tp"])
        tp_size = pg_collection.tp.size()
        self.attn_mask_type = attn_mask_type
        projection_size = config.kv_channels * config.num_attention_heads
        self.hidden_size_per_partition = divide(projection_size, tp_size)
        self.heads_per_partition = divide(config.num_attention_heads, tp_size)
        self.query_groups_per_partition = divide(config.num_query_groups, tp_size)
        head_dim = divide(projection_size, config.num_attention_heads)
        self.softmax_scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(head_dim)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: Optional[torch.Tensor],
        attn_mask_type: Optional[AttnMaskType] = None,
        attention_bias: Optional[torch.Tensor] = None,
        packed_seq_params: Optional[PackedSeqParams] = None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention supports neither packed sequences nor attention bias")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        repeat = self.heads_per_partition // self.query_groups_per_partition
        if repeat > 1:
            key = key.repeat_interleave(repeat, dim=2)
            value = value.repeat_interleave(repeat, dim=2)
        # [s, b, n, d] -> [b, n, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        is_causal = mask_type == AttnMaskType.causal and attention_mask is None
        sdpa_mask = None
        if attention_mask is not None:
            sdpa_mask = ~attention_mask.bool()  # SDPA: True = may attend.
        dropout_p = self.dropout_p if self.training else 0.0
        if dropout_p > 0.0 and not self.config.sequence_parallel:
            # Heads are split across TP ranks: each rank needs its own dropout stream.
            with tensor_parallel.get_cuda_rng_tracker().fork():
                context = self._sdpa(q, k, v, sdpa_mask, dropout_p, is_causal)
        else:
            context = self._sdpa(q, k, v, sdpa_mask, dropout_p, is_causal)
        # [b, n, s, d] -> [s, b, n*d]
        context = context.permute(2, 0, 1, 3).contiguous()
        return context.view(context.size(0), context.size(1), self.hidden_size_per_partition)

    def _sdpa(self, q, k, v, mask, dropout_p, is_causal):
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=self.softmax_scale
        )
