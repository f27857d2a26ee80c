"""Routing token ids travel to MoE layers in megatron-core's ``padding_mask`` argument.

Hash routing and StableMoE's distilled router route by token id, on every pipeline stage.
megatron-core 0.16.1 passes ``padding_mask`` from ``GPTModel.forward`` through ``TransformerBlock``
(including its activation-recompute path, which saves it with the layer inputs) into every
``TransformerLayer`` and on to ``mlp(hidden, padding_mask=...)``, unchanged on every stage. The model
providers therefore pass the ``[b, s]`` int64 token ids there; only our MoE layer reads them.
megatron scatters the tensor for sequence parallelism on the first stage only, so later stages
receive the whole sequence: :func:`routing_token_ids` takes this TP rank's slice when needed.

Version range: this holds for megatron-core 0.16.x. megatron's own ``MoELayer.forward`` (which ours
replaces, so it never runs here) reads ``padding_mask`` as a padding mask,
``padding_mask.transpose(0, 1).bool()``; newer megatron-core versions give the argument that meaning
on more of its way to the MLP. ``tests/moe/test_token_ids_guard.py`` builds a GPTModel from our spec
and fails loudly if our layer no longer receives exactly the int64 ids the model was given (forward
and activation recomputation): check it first when upgrading megatron-core.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist


def routing_token_ids(
    token_ids_bs: Optional[torch.Tensor], seq_batch: tuple[int, int], tp_group: dist.ProcessGroup
) -> Optional[torch.Tensor]:
    """Flatten ``[b, s]`` (or this rank's ``[b, s/tp]``) token ids to the layer's token order ``[s*b]``.

    Args:
        token_ids_bs: token ids from ``padding_mask`` (None when the model was called without them).
        seq_batch: ``(s_local, b)`` of the layer's hidden states ``[s_local, b, h]``.
        tp_group: tensor-parallel group (for the sequence-parallel slice).
    """
    if token_ids_bs is None or token_ids_bs.dtype == torch.bool:
        return None
    seq_local, _ = seq_batch
    if token_ids_bs.shape[1] != seq_local:
        tp_size, tp_rank = tp_group.size(), tp_group.rank()
        if token_ids_bs.shape[1] != seq_local * tp_size:
            raise ValueError(
                f"routing token ids have sequence length {token_ids_bs.shape[1]}, "
                f"expected {seq_local} or {seq_local * tp_size}"
            )
        token_ids_bs = token_ids_bs[:, tp_rank * seq_local : (tp_rank + 1) * seq_local]
    return token_ids_bs.transpose(0, 1).reshape(-1)
