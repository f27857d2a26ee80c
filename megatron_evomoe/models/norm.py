"""LayerNorm for the local spec that also works under sequence parallelism.

megatron-core's torch fallback (``WrappedTorchNorm``, used when apex is absent) refuses
``sequence_parallel``. Under sequence parallelism each TP rank normalises its own slice of the
sequence with replicated weights, so their gradients must be summed over the TP group: marking the
parameters ``sequence_parallel`` lets megatron's ``finalize_model_grads`` do exactly that.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm`` with megatron's norm constructor signature."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **_unused):
        if config.normalization != "LayerNorm":
            raise ValueError(f"normalization {config.normalization!r} is not supported by the local spec")
        super().__init__(hidden_size, eps=eps, dtype=config.params_dtype)
        for param in self.parameters():
            setattr(param, "sequence_parallel", config.sequence_parallel)
