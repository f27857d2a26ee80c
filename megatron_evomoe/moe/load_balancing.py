"""Over which tokens a balance loss takes its statistics: ``--moe-router-load-balancing-type``.

megatron-core's names and meanings (``TransformerConfig.moe_router_load_balancing_type``, 0.13+):

* ``aux_loss`` (default): the micro-batch. Counts and gate means over this micro-batch's tokens
  (the whole sequence under sequence parallelism) -- what every balance loss here computed before.
* ``seq_aux_loss``: each sequence on its own (DeepSeek-V2/V3's sequence-wise balance loss). Counts
  and gate means per sequence of the micro-batch, the loss averaged over its sequences.
* ``global_aux_loss``: the global batch (Qiu et al. 2025, "Demons in the Detail: On Implementing
  Load Balancing Loss for Training Specialized Mixture-of-Expert Models", arXiv:2501.11873). The
  counts are summed over every data-parallel rank (one all-reduce) and over the micro-batches of
  the optimizer step so far; the gate mean stays this rank's micro-batch's, so its gradient is
  local. Averaged over the data-parallel ranks, as gradients are, the loss is the formula applied
  to the global counts and the global gate means.
* ``none``: no balance loss.

Micro-batches of one step (megatron-core's ``global_tokens_per_expert`` / ``ga_steps``): the
counts of micro-batch m are those of micro-batches 1..m. Each micro-batch's backward runs before
the next one's forward, so the counts of later micro-batches do not exist yet when an earlier one
needs its gradient; the last micro-batch sees the counts of the whole global batch. The running
sums are cleared once per optimizer step by megatron-core's ``finalize_model_grads`` (its
``reset_model_temporary_tensors`` calls :meth:`~megatron_evomoe.moe.router.Router.reset_global_aux_loss_tracker`
when ``TransformerConfig.moe_router_load_balancing_type`` is ``global_aux_loss``).

Gradient scale, where this departs from megatron-core 0.16.1: there the gate mean of
``global_aux_loss`` is divided by the *global* token count, so after the data-parallel gradient
average the balance gradient is 1/DP of that of ``aux_loss`` at the same coefficient
(NVIDIA/Megatron-LM issue #3672, fix proposed in PR #3769). Here the gate mean is over this rank's
tokens, as in arXiv:2501.11873, so ``--moe-aux-loss-coeff`` weighs the balance gradient the same
whatever the type and the data-parallel size.

Recomputation: a router runs twice per micro-batch under ``--moe-recompute moe_aware`` or
``--recompute-granularity full`` (once without autograd, again in backward). Both runs read the
running sums; only the run with autograd enabled (the only run without recomputation) adds the
micro-batch to them, so every micro-batch is counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist

from megatron_evomoe.moe.load_balancing_types import (  # noqa: F401 (re-exported)
    AUX_LOSS, GLOBAL_AUX_LOSS, LOAD_BALANCING_TYPES, MEGATRON_LOSS_NAMES, NONE, SEQ_AUX_LOSS,
)


@dataclass
class BalanceStatistics:
    """What a balance formula reads (``moe/balance.py``), at the level the type chooses.

    Attributes:
        gate_sum: ``[E]`` (``[B, E]`` per sequence) sum over this rank's tokens of the gate value the
            loss pushes; the only differentiable input.
        counts: ``[E]`` (``[B, E]``) tokens counted per expert, over the tokens ``num_tokens`` counts.
        num_tokens: tokens the counts were taken over (a scalar tensor).
        gate_num_tokens: tokens of the sequence batch ``gate_sum`` belongs to (this rank's
            micro-batch, or one sequence; whole sequences under sequence parallelism).
    """

    gate_sum: torch.Tensor
    counts: torch.Tensor
    num_tokens: torch.Tensor
    gate_num_tokens: torch.Tensor


def per_sequence_sum(tensor: torch.Tensor, num_sequences: int) -> torch.Tensor:
    """``[T, E]`` -> ``[B, E]`` sums per sequence.

    megatron's activations are ``[s, b, h]``; flattened to tokens, token t belongs to sequence
    ``t % b`` (also for a sequence-parallel shard ``[s / tp, b]``).
    """
    return tensor.reshape(-1, num_sequences, tensor.shape[-1]).sum(dim=0)


class GlobalTokenCounts:
    """Running sums, over the micro-batches of one optimizer step, of counts summed over the
    data-parallel ranks (the module docstring says when a micro-batch is added)."""

    def __init__(self) -> None:
        self._sums: Optional[torch.Tensor] = None  # [E + 1]: counts, then tokens

    def reset(self) -> None:
        """Forget the step (called once per optimizer step)."""
        self._sums = None

    def add(
        self, counts: torch.Tensor, num_tokens: torch.Tensor, group: Optional[dist.ProcessGroup]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts ``[E]`` and tokens of this micro-batch (whole sequences) -> those of the global
        batch so far: ``(counts [E], tokens)`` over every data-parallel rank and micro-batch 1..m."""
        stats = torch.cat([counts.detach().float(), num_tokens.detach().float().reshape(1)])
        if group is not None and group.size() > 1:
            dist.all_reduce(stats, group=group)
        total = stats if self._sums is None else self._sums + stats
        if torch.is_grad_enabled():
            self._sums = total
        return total[:-1], total[-1]
