"""Balance losses as pure functions of routing statistics.

Switch (Fedus et al. 2021, eq. 4) and EvoMoE (eq. 10) share one form,

    loss = alpha * N * sum_i (count_i / T) * (sum_x p_i(x) / T),

and differ only in what is counted: Switch counts the tokens whose top-1 is expert i; EvoMoE counts
the tokens whose (thresholded) gate weight g_i is > 0, i.e. every expert a token visits. GShard
(Lepikhin et al. 2020, Algorithm 1) is the same form with the *first* choices of its top-2 gate
counted: the paper's l_aux = (1/E) sum_e (c_e / S) * m_e scaled by E^2 so that uniform routing gives
1 (fairseq / megatron convention; the coefficient 0.01 refers to this scale). The counts carry no
gradient; the gradient flows through the summed probabilities.

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


def stablemoe_balance_loss(
    assigned_gate_sum: torch.Tensor,
    counts: torch.Tensor,
    num_tokens: int | torch.Tensor,
    coeff: float,
) -> torch.Tensor:
    """StableMoE (Dai et al. 2022, eq. 4), divided by the number of tokens.

    alpha * sum_i ((|A_i| - n/N) / (n/N)) * sum_{t in A_i} sigmoid(s_{t,i}) / n: an overloaded
    expert (|A_i| above the mean n/N) has its assignment scores pushed down, an underloaded one up.
    The paper sums over tokens; fairseq (where StableMoE was built) divides every loss by the number
    of tokens before the update, so the per-token mean used here is the same objective on the
    scale of a mean LM loss.

    Args:
        assigned_gate_sum: ``[E]`` sum over (this rank's) tokens assigned to expert i of
            sigmoid(s_{t,i}); the only differentiable input.
        counts: ``[E]`` |A_i|, tokens assigned to expert i over the whole sequence.
        num_tokens: n, tokens of the whole sequence.
        coeff: alpha.
    """
    num_experts = counts.numel()
    mean_load = num_tokens / num_experts
    relative_excess = (counts.detach().to(assigned_gate_sum.dtype) - mean_load) / mean_load
    return coeff * torch.sum(relative_excess * assigned_gate_sum) / num_tokens
