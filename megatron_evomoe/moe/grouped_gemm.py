"""All local experts' FFNs in two grouped GEMMs (``torch._grouped_mm``), with a hand-written backward.

Rows ``x [M, h]`` arrive grouped by expert (``tokens_per_expert [L]`` rows each). Forward::

    h1 = x_e @ W1_e^T      (grouped GEMM; W1 stacked [L, f, h])         [M, f]
    a  = act(h1)                                                          [M, f]
    y  = a_e @ W2_e^T      (grouped GEMM; W2 stacked [L, h, f])         [M, h]
    out = p * y            (the gate weight, one per row)                 [M, h]

Backward with ``g = dL/d out``: ``dL/dp = <g, y>`` over h, ``dL/da = (p g)_e @ W2_e`` (the gate
weight is applied to the narrow ``[M, h]`` gradient, never to an ``[M, f]`` tensor), the GELU
gradient written in place, and the weight gradients as grouped "K-split" products
``dW2_e = (p g)_e^T a_e`` and ``dW1_e = dh1_e^T x_e``. Kept for backward: what a dense FFN keeps
(its input, h1 and a), the unweighted output ``y [M, h]`` for the gate weight's gradient, and the
gate weights ``p [M]``. No per-expert Python loop in either direction.

The weights are the experts' own parameters (the checkpoint layout of megatron's SequentialMLP).
When they lie back to back in one storage (:func:`pack_consecutively`) the stacked ``[L, ...]``
operand is a view and costs nothing; otherwise it is a copy made for each GEMM.
"""

from __future__ import annotations

from typing import Callable, List, Sequence

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]


def is_packed(weights: Sequence[torch.Tensor]) -> bool:
    """True when ``weights`` are contiguous, equally shaped and back to back in one storage."""
    first = weights[0]
    if not first.is_contiguous():
        return False
    step = first.numel() * first.element_size()
    end = first.storage_offset() * first.element_size() + step * len(weights)
    if first.untyped_storage().nbytes() < end:
        return False  # the others cannot lie in the first one's storage
    start, shape = first.data_ptr(), first.shape
    return all(
        w.data_ptr() == start + i * step and w.shape == shape and w.is_contiguous()
        for i, w in enumerate(weights)
    )


def stacked(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[L, *shape]`` of the L equally shaped ``weights``: a view when packed, else a copy."""
    if is_packed(weights):
        first = weights[0].detach()
        return first.as_strided((len(weights), *first.shape), (first.numel(), *first.stride()))
    return torch.stack([w.detach() for w in weights])


@torch.no_grad()
def pack_consecutively(weights: List[torch.nn.Parameter]) -> None:
    """Move the parameters' data into one ``[L, *shape]`` buffer (each keeps its identity)."""
    if len(weights) < 2 or is_packed(weights):
        return
    buffer = torch.stack([w.data for w in weights])
    for i, weight in enumerate(weights):
        weight.data = buffer[i]


def _offsets(tokens_per_expert: torch.Tensor, device: torch.device) -> torch.Tensor:
    """End row of each group, int32 on the compute device (what ``torch._grouped_mm`` takes)."""
    return torch.cumsum(tokens_per_expert, 0, dtype=torch.int32).to(device, non_blocking=True)


def _zero_empty_groups(grad: torch.Tensor, counts: List[int]) -> torch.Tensor:
    """Weight gradients of experts without rows are 0 (not left to the kernel's convention)."""
    empty = [i for i, n in enumerate(counts) if n == 0]
    if empty:
        grad[empty] = 0
    return grad


class _GroupedExpertFFN(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, probs, tokens_per_expert, activation, num_experts, *weights):
        counts = tokens_per_expert.tolist()
        ctx.num_experts, ctx.counts = num_experts, counts
        if x.shape[0] == 0:  # no rows on this rank: nothing to compute, zero weight gradients
            ctx.empty = True
            ctx.save_for_backward(*weights)
            return x.new_zeros((0, weights[num_experts].shape[0]))
        ctx.empty = False
        offs = _offsets(tokens_per_expert, x.device)
        w1, w2 = stacked(weights[:num_experts]), stacked(weights[num_experts:])
        h1 = torch._grouped_mm(x, w1.transpose(1, 2), offs=offs)  # [M, f]
        act = activation(h1)
        y = torch._grouped_mm(act, w2.transpose(1, 2), offs=offs)  # [M, h], before the gate weight
        ctx.activation = activation
        # The GELU backward needs only h1; other activations are re-run from h1 in backward.
        kept_act = act if activation is F.gelu else None
        ctx.save_for_backward(x, probs, offs, h1, kept_act, y, *weights)
        return y * probs.unsqueeze(-1).to(y.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.empty:
            return (grad_out.new_zeros((0, ctx.saved_tensors[0].shape[1])), grad_out.new_zeros(0),
                    None, None, None, *[torch.zeros_like(w) for w in ctx.saved_tensors])
        x, probs, offs, h1, act, y, *weights = ctx.saved_tensors
        num_experts = ctx.num_experts
        w1, w2 = stacked(weights[:num_experts]), stacked(weights[num_experts:])
        grad_out = grad_out.contiguous()
        grad_probs = None
        if ctx.needs_input_grad[1]:
            grad_probs = torch.linalg.vecdot(grad_out, y).to(probs.dtype)  # [M]
        grad_y = grad_out * probs.unsqueeze(-1).to(grad_out.dtype)  # [M, h]
        act_graph = None
        if act is None:
            with torch.enable_grad():
                h1_leaf = h1.detach().requires_grad_()
                recomputed = ctx.activation(h1_leaf)
            act, act_graph = recomputed.detach(), (recomputed, h1_leaf)
        grad_act = torch._grouped_mm(grad_y, w2, offs=offs)  # [M, f]
        needs_weights = any(ctx.needs_input_grad[5:])
        grad_w2 = torch._grouped_mm(grad_y.t(), act, offs=offs) if needs_weights else None  # [L, h, f]
        if act_graph is None:
            grad_h1 = torch.ops.aten.gelu_backward.grad_input(grad_act, h1, grad_input=grad_act)
        else:
            (grad_h1,) = torch.autograd.grad(act_graph[0], act_graph[1], grad_act)
        grad_x = torch._grouped_mm(grad_h1, w1, offs=offs) if ctx.needs_input_grad[0] else None  # [M, h]
        if not needs_weights:
            return (grad_x, grad_probs, None, None, None, *([None] * len(weights)))
        grad_w1 = torch._grouped_mm(grad_h1.t(), x, offs=offs)  # [L, f, h]
        grad_w1 = _zero_empty_groups(grad_w1, ctx.counts)
        grad_w2 = _zero_empty_groups(grad_w2, ctx.counts)
        return (grad_x, grad_probs, None, None, None, *grad_w1.unbind(0), *grad_w2.unbind(0))


def grouped_expert_ffn(
    x: torch.Tensor,
    probs: torch.Tensor,
    tokens_per_expert: torch.Tensor,
    fc1_weights: Sequence[torch.Tensor],
    fc2_weights: Sequence[torch.Tensor],
    activation: Activation,
) -> torch.Tensor:
    """``p * FFN_e(x)`` for rows grouped by expert; see the module docstring.

    Args:
        x: ``[M, h]`` rows, grouped by expert.
        probs: ``[M]`` gate weight of each row.
        tokens_per_expert: ``[L]`` int64 (CPU) rows per expert, summing to M.
        fc1_weights: L tensors ``[f, h]``; fc2_weights: L tensors ``[h, f]`` (nn.Linear layout).
        activation: elementwise ``[M, f] -> [M, f]`` (GLU variants: ``[M, 2f] -> [M, f]``).

    Returns:
        ``[M, h]`` gate-weighted expert outputs.
    """
    if len(fc1_weights) != len(fc2_weights) or len(fc1_weights) != tokens_per_expert.numel():
        raise ValueError("one fc1 and one fc2 weight per expert are needed")
    return _GroupedExpertFFN.apply(
        x, probs, tokens_per_expert, activation, len(fc1_weights), *fc1_weights, *fc2_weights
    )
