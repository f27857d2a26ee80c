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

Counts and gate sums may carry leading dimensions (``[B, E]``: one row per sequence, for
``--moe-router-load-balancing-type seq_aux_loss``); the loss is then the mean of the rows' losses.
The counts may be taken over more tokens than the gate sums (``global_aux_loss``: counts over the
global batch, gate sums over this rank's micro-batch): ``gate_num_tokens`` then names the tokens the
gate sums are a mean over (``moe/load_balancing.py``).

The router z-loss (ST-MoE, Zoph et al. 2022, eq. 5) is here too: it is the other loss every router
with logits can add.
"""

from __future__ import annotations

import torch


def count_weighted_balance_loss(
    probs_sum: torch.Tensor,
    counts: torch.Tensor,
    num_tokens: int | torch.Tensor,
    coeff: float,
    gate_num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """alpha * N * sum_i (count_i / T) * (probs_sum_i / T_gate), averaged over leading dimensions.

    Args:
        probs_sum: ``[..., E]`` sum over (this rank's) tokens of each expert's gate probability.
        counts: ``[..., E]`` tokens counted for each expert (over the whole sequence, or the global batch).
        num_tokens: T, tokens the counts were taken over.
        coeff: alpha.
        gate_num_tokens: T_gate, tokens of the sequence batch ``probs_sum`` belongs to (default T).

    Returns:
        A scalar tensor (differentiable through ``probs_sum``).
    """
    num_experts = probs_sum.shape[-1]
    gate_num_tokens = num_tokens if gate_num_tokens is None else gate_num_tokens
    fraction = counts.detach().to(probs_sum.dtype) / num_tokens
    per_row = torch.sum(fraction * probs_sum / gate_num_tokens, dim=-1)
    return coeff * num_experts * (per_row if per_row.dim() == 0 else per_row.mean())


def stablemoe_balance_loss(
    assigned_gate_sum: torch.Tensor,
    counts: torch.Tensor,
    num_tokens: int | torch.Tensor,
    coeff: float,
    gate_num_tokens: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """StableMoE (Dai et al. 2022, eq. 4), divided by the number of tokens.

    alpha * sum_i ((|A_i| - n/N) / (n/N)) * sum_{t in A_i} sigmoid(s_{t,i}) / n: an overloaded
    expert (|A_i| above the mean n/N) has its assignment scores pushed down, an underloaded one up.
    The paper sums over tokens; fairseq (where StableMoE was built) divides every loss by the number
    of tokens before the update, so the per-token mean used here is the same objective on the
    scale of a mean LM loss.

    Args:
        assigned_gate_sum: ``[..., E]`` sum over (this rank's) tokens assigned to expert i of
            sigmoid(s_{t,i}); the only differentiable input.
        counts: ``[..., E]`` |A_i|, tokens assigned to expert i over the whole sequence (or the
            global batch).
        num_tokens: n, tokens the counts were taken over.
        coeff: alpha.
        gate_num_tokens: tokens of the sequence batch ``assigned_gate_sum`` belongs to (default n).

    Returns:
        A scalar tensor, the mean over leading dimensions.
    """
    num_experts = counts.shape[-1]
    gate_num_tokens = num_tokens if gate_num_tokens is None else gate_num_tokens
    mean_load = num_tokens / num_experts
    relative_excess = (counts.detach().to(assigned_gate_sum.dtype) - mean_load) / mean_load
    per_row = torch.sum(relative_excess * assigned_gate_sum, dim=-1)
    if per_row.dim() > 0:
        per_row = per_row.mean()
    return coeff * per_row / gate_num_tokens


def router_z_loss(logits: torch.Tensor, num_tokens: int | torch.Tensor, coeff: float) -> torch.Tensor:
    """ST-MoE's router z-loss (Zoph et al. 2022, eq. 5): coeff * (1/T) sum_x (logsumexp_i logits_i(x))^2.

    It keeps the logits entering the gate small, so that the exponentials of the softmax stay in
    range, which ST-MoE found to stabilise training without hurting quality (c_z = 1e-3 there);
    megatron-core's ``z_loss_func`` with ``--moe-z-loss-coeff``.

    Args:
        logits: ``[T_local, E]`` this rank's router logits (fp32).
        num_tokens: T, tokens of the whole sequence (T_local without sequence parallelism), so that
            the per-rank losses of the sequence shards add up to the loss of the whole sequence.
        coeff: the coefficient (ST-MoE: 1e-3).

    Returns:
        A scalar tensor (differentiable through ``logits``).
    """
    return coeff * torch.sum(torch.logsumexp(logits, dim=-1).square()) / num_tokens
