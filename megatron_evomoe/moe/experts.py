"""Expert MLPs: megatron-core's SequentialMLP with the gate weight applied to the expert's output,
and the same experts computed with grouped GEMMs.

megatron's ``SequentialMLP`` hands each token's gate weight to its expert MLP as ``per_token_scale``,
which multiplies the FFN *intermediate* ``[m, f]`` before fc2. Without fc2 bias the same result
comes from scaling the expert's *output* ``[m, h]``: p * W2 g(x) = W2 (p g(x)). That is f / h times
less elementwise work in forward and backward, and autograd keeps one ``[m, h]`` tensor for the
probability's gradient instead of a second ``[m, f]`` copy of the intermediate (measured in
docs/measurement.md). Results equal megatron's up to float rounding.

:class:`GroupedGemmExperts` (``--moe-grouped-gemm`` without Transformer Engine) runs all local
experts in two ``torch._grouped_mm`` calls (``moe/grouped_gemm.py``) instead of a Python loop of
per-expert GEMMs. It keeps SequentialMLP's modules and parameters, so checkpoints, the
layout-independent initialisation and EvoMoE's diversify see exactly the same experts; its expert
weights only move into one buffer per linear so that the grouped GEMM reads them without a copy.

With biases, fp8/fp4 padding or ``moe_apply_probs_on_input`` the scale is not equivalent or is
handled elsewhere, and both classes fall back to megatron's forward.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.moe.experts import SequentialMLP

from megatron_evomoe.device import grouped_mm_available
from megatron_evomoe.moe.grouped_gemm import Activation, grouped_expert_ffn, pack_consecutively


class OutputScaledSequentialMLP(SequentialMLP):
    """SequentialMLP whose gate weights multiply each expert's ``[m, h]`` output (see module doc)."""

    def _scales_output(self) -> bool:
        config = self.config
        return not (config.add_bias_linear or config.moe_apply_probs_on_input or config.fp8 or config.fp4)

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        """``[M, h]`` rows grouped by local expert, ``tokens_per_expert [L]``, ``probs [M]`` ->
        (``[M, h]`` prob-weighted expert outputs, None)."""
        if not self._scales_output():
            return super().forward(permuted_local_hidden_states, tokens_per_expert, permuted_probs)
        if self.num_local_experts == 1:
            output, _ = self.local_experts[0](permuted_local_hidden_states)
        else:
            counts = tokens_per_expert.tolist()
            chunks = torch.split(permuted_local_hidden_states, counts)
            output = torch.cat([expert(chunk)[0] for expert, chunk in zip(self.local_experts, chunks)], dim=0)
        return output * permuted_probs.unsqueeze(-1).to(output.dtype), None


def expert_activation(config) -> Activation:
    """The expert MLP's activation as megatron's MLP applies it without bias (GLU included)."""
    if not config.gated_linear_unit:
        return config.activation_func

    def glu(x: torch.Tensor) -> torch.Tensor:
        x_glu, x_linear = torch.chunk(x, 2, dim=-1)
        if (clamp := config.activation_func_clamp_value) is not None:
            x_glu = x_glu.clamp(min=None, max=clamp)
            x_linear = x_linear.clamp(min=-clamp, max=clamp)
        return config.activation_func(x_glu) * (x_linear + config.glu_linear_offset)

    return glu


class GroupedGemmExperts(OutputScaledSequentialMLP):
    """The local experts in two grouped GEMMs; parameters and checkpoint keys of SequentialMLP.

    Falls back to the per-expert loop where ``torch._grouped_mm`` has no kernel for the device and
    dtype (logged once, :func:`device.grouped_mm_available`) and where megatron's MLP does more
    than GEMM-activation-GEMM (biases, fused or TE activations, fp8).
    """

    def __init__(self, num_local_experts, config, submodules, pg_collection=None):
        super().__init__(num_local_experts, config, submodules, pg_collection=pg_collection)
        self._activation = expert_activation(self.config)
        self._pack_weights()

    def _expert_weights(self):
        fc1 = [expert.linear_fc1.weight for expert in self.local_experts]
        fc2 = [expert.linear_fc2.weight for expert in self.local_experts]
        return fc1, fc2

    def _pack_weights(self) -> None:
        for weights in self._expert_weights():
            pack_consecutively(weights)

    def _apply(self, fn, recurse=True):
        # .to(dtype / device) gives every parameter new storage: put the experts back in one buffer.
        module = super()._apply(fn, recurse)
        self._pack_weights()
        return module

    def _runs_grouped(self, rows: torch.Tensor) -> bool:
        config = self.config
        if not self._scales_output() or config.bias_activation_fusion or config.use_te_activation_func:
            return False
        fc1, fc2 = self._expert_weights()
        if rows.dtype != fc1[0].dtype:
            return False
        return grouped_mm_available(rows.device, rows.dtype, fc1[0].shape[1], fc1[0].shape[0], fc2[0].shape[1])

    def forward(self, permuted_local_hidden_states: torch.Tensor, tokens_per_expert: torch.Tensor,
                permuted_probs: torch.Tensor):
        """Same contract as :meth:`OutputScaledSequentialMLP.forward`."""
        if not self._runs_grouped(permuted_local_hidden_states):
            return super().forward(permuted_local_hidden_states, tokens_per_expert, permuted_probs)
        fc1, fc2 = self._expert_weights()
        output = grouped_expert_ffn(
            permuted_local_hidden_states, permuted_probs, tokens_per_expert.cpu(), fc1, fc2, self._activation
        )
        return output, None
