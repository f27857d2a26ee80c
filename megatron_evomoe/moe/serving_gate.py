"""A router's gate as it serves after training, written out for code that is not ours.

Why: an exported model (``export/``, e.g. the Hugging Face directory) must route exactly as the
trained model does in its final routing state, without our Router classes. Each router says, in
:meth:`~megatron_evomoe.moe.router.Router.serving_gate`, which of a few plain gate computations its
evaluation forward is in a given state, with the numbers and tensors it needs. The consumer (the
exported modeling file) implements these kinds once; router knowledge stays in the router's file.

Kinds (gate logits are fp32 ``x W^T`` over the MoE layer's input ``x`` ``[T, h]``):

* ``softmax_topk`` (``weight [E, h]``; options ``temperature``, ``top_k``, ``normalize``):
  p = softmax(logits / temperature); the top-k experts (k = 1: argmax) with weight p, or with p
  divided by the sum of the k kept values when ``normalize`` (clamped below by fp32 eps).
* ``softmax_threshold`` (``weight``; ``temperature``, ``threshold``): p as above; every expert with
  p > threshold, weight p, not renormalised.
* ``sigmoid_choice`` (``weight``, optional ``table [vocab]``; ``choice`` = ``argmax`` | ``table``):
  one expert, argmax of the logits or ``table[token id]``; weight sigmoid(its logit).
* ``token_table`` (``table [vocab]``): expert ``table[token id]``, weight 1.
* ``dselectk`` (``z_weight [k*m, h]``, ``z_bias``, ``selector_weight [k, h]``, ``selector_bias``;
  ``gamma``, ``num_selectors``, ``num_bits``): DSelect-k's q = sum_j softmax(alpha)_j r_j; experts
  with q > 0, weight q.

An expert's output is multiplied by its weight and summed over the token's experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

import torch

SOFTMAX_TOPK = "softmax_topk"
SOFTMAX_THRESHOLD = "softmax_threshold"
SIGMOID_CHOICE = "sigmoid_choice"
TOKEN_TABLE = "token_table"
DSELECTK = "dselectk"
KINDS = (SOFTMAX_TOPK, SOFTMAX_THRESHOLD, SIGMOID_CHOICE, TOKEN_TABLE, DSELECTK)


@dataclass
class ServingGate:
    """One MoE layer's gate in a fixed routing state.

    Attributes:
        kind: one of :data:`KINDS` (the module docstring defines each).
        options: JSON-serialisable numbers and names of the kind.
        tensors: the gate's tensors by name (detached copies; fp32 or int64).
    """

    kind: str
    options: Dict[str, Any] = field(default_factory=dict)
    tensors: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown serving gate kind {self.kind!r} (one of {', '.join(KINDS)})")


def gate_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """A detached, contiguous CPU copy: fp32 for floating tensors (gates compute in fp32), else as is."""
    tensor = tensor.detach().to("cpu")
    if tensor.is_floating_point():
        tensor = tensor.float()
    return tensor.contiguous().clone()
