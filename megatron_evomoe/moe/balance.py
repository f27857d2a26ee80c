"""Balance losses as pure functions of routing statistics.

Switch (Fedus et al. 2021, eq. 4) and EvoMoE (eq. 10) share one form,

    loss = alpha * N * sum_i (count_i / T) * (sum_x p_i(x) / T),

and differ only in what is counted: Switch counts the tokens whose top-1 is expert i; EvoMoE counts
the tokens whose (thresholded) gate weight g_i is > 0, i.e. every expert a token visits. The counts
carry no gradient; the gradient flows through the summed probabilities.

Under sequence parallelism each rank passes its *local* probability sums together with the
*global* counts and token total: the per-rank losses then add up to the loss of the whole sequence,
and so do their gradients.
"""

from __future__ import annotations

import torch


def count_weighted_balance_loss(
    probs_sum: torch.Tensor,
    counts: torch.Tensor,
    num_tokens: int | torch.Tensor,
    coeff: float,
) -> torch.Tensor:
    """alpha * N * sum_i (count_i / T) * (probs_sum_i / T).

    Args:
        probs_sum: ``[E]`` sum over (this rank's) tokens of each expert's gate probability.
        counts: ``[E]`` tokens counted for each expert (over the whole sequence).
        num_tokens: T, tokens of the whole sequence.
        coeff: alpha.

    Returns:
        A scalar tensor (differentiable through ``probs_sum``).
    """
    num_experts = probs_sum.numel()
    fraction = counts.detach().to(probs_sum.dtype) / num_tokens
    return coeff * num_experts * torch.sum(fraction * probs_sum / num_tokens)


def switch_balance_loss(probs: torch.Tensor, top1_map: torch.Tensor, coeff: float) -> torch.Tensor:
    """Switch Transformer loss for one unsplit batch: ``probs`` ``[T, E]`` softmax, ``top1_map`` bool."""
    return count_weighted_balance_loss(probs.sum(0), top1_map.sum(0), probs.shape[0], coeff)


def evomoe_balance_loss(gate: torch.Tensor, kept_map: torch.Tensor, coeff: float) -> torch.Tensor:
    """EvoMoE eq. 10 for one unsplit batch: ``gate`` ``[T, E]`` = g', ``kept_map`` = (g_i > 0)."""
    return count_weighted_balance_loss(gate.sum(0), kept_map.sum(0), gate.shape[0], coeff)
