"""MoE-aware recomputation (EvoMoE sec. IV): recompute an MoE layer in backward, not its all-to-alls.

Full recomputation (``--recompute-granularity full``) keeps only each transformer layer's input
and re-runs the whole layer in backward -- including the two all-to-alls of its MoE layer, which are
the expensive part. ``--moe-recompute moe_aware`` cuts the MoE layer at the all-to-alls instead:

    x --[route: router, capacity]--> probs, map --[dispatch a2a]--> expert_input, expert_probs
      --[experts: FFN]--> expert_output --[combine a2a]--> output

The two bracketed segments run without saving their internals; in backward each is recomputed from
its kept inputs (:func:`checkpoint`). The all-to-alls are outside both segments, run once, and their
backward is only the reverse exchange of the gradients (which any backward needs). What is kept per
MoE layer and micro-batch:

* the layer input ``x [T, h]`` (and routing token ids ``[T]`` when a router uses them), to recompute
  the router -- the paper's "input tensor of the layer";
* the dispatch all-to-all's output on the expert side, ``expert_input [M, h]`` and ``expert_probs
  [M]`` (+ ``tokens_per_expert [L]``), to recompute the experts -- the paper's all-to-all boundary;
* the routing map ``[T, E]`` (bool), to check that the recomputed routing is the one the
  all-to-alls moved (a router that is not deterministic given its RNG state would otherwise
  silently mix up gradients);
* integer bookkeeping of the dispatcher (token/row indices, counts).

At the combine all-to-all boundary nothing needs keeping: the gate weight is applied inside the
experts (megatron's expert MLP), so nothing after the combine all-to-all has a backward that reads
an activation. (In the paper's fairseq layer the gate multiplied the combined output, which is why
it kept that all-to-all's tensor too.) What is *not* kept: router logits/softmax and the fp32 copy
of ``x`` it multiplies, and inside every expert the FC1 output, the activation and its gate-weighted
copy -- ``O(M * ffn)`` per layer, the bulk of an MoE layer's activations.

Recomputation restores the CPU, CUDA and megatron tracker RNG states of the forward pass, like
megatron's own checkpointing, so routers with noise (jitter, Gumbel) route identically. Routers
must, as for ``--recompute-granularity full``, be free of side effects in ``forward``; a router's
statistics all-reduce over the sequence-parallel group (a few numbers, not an all-to-all) does run
again in backward. Combine with ``--recompute-granularity selective`` to recompute core attention
too; ``full`` already recomputes whole layers (all-to-alls included) and is rejected with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils import _pytree as pytree

from megatron_evomoe.errors import InputError

RECOMPUTE_MODES = ("none", "moe_aware")

NO_RECOMPUTE, SEGMENTS, REPLAY_EXCHANGES = "none", "segments", "replay"


def moe_recompute_scope(config) -> str:
    """What ``--moe-recompute`` means in this configuration; the MoE layer and its dispatcher both ask here.

    ``segments`` (moe_aware alone): the router and expert segments of the MoE layer are recomputed in
    backward (:class:`MoERecompute`); the all-to-alls sit between them and run once. ``replay``
    (moe_aware with ``--recompute-granularity full``, the paper's): megatron recomputes whole layers
    and the all-to-alls hand back their recorded results instead of communicating
    (``moe/dispatch/replay.py``). ``none`` otherwise.
    """
    if getattr(config, "moe_recompute", "none") != "moe_aware":
        return NO_RECOMPUTE
    return REPLAY_EXCHANGES if getattr(config, "recompute_granularity", None) == "full" else SEGMENTS


def _rng_states():
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from megatron_evomoe.device import device_is_cuda

    cuda = torch.cuda.get_rng_state() if device_is_cuda() else None
    return torch.get_rng_state(), cuda, get_cuda_rng_tracker().get_states()


def _set_rng_states(states) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    cpu, cuda, tracker = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
    get_cuda_rng_tracker().set_states(tracker)


class _Segment:
    """A function of a pytree of arguments, callable with only the tensor leaves.

    Holds no tensors between forward and backward (the autograd context keeps those), so that
    nothing stays alive that the accounting of saved tensors would miss.
    """

    def __init__(self, fn: Callable, args: tuple):
        self.fn = fn
        leaves, self.args_spec = pytree.tree_flatten(args)
        self.tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        self.inputs = [leaves[i] for i in self.tensor_slots]
        self.arg_leaves = [None if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        self.out_spec = None
        self.out_leaves: list = []  # non-tensor output leaves; None where a tensor goes
        self.out_is_tensor: list[bool] = []

    def take_inputs(self) -> list[torch.Tensor]:
        """The tensor arguments (handed over once, to the autograd context)."""
        inputs, self.inputs = self.inputs, []
        return inputs

    def call(self, tensors) -> list[torch.Tensor]:
        """Run ``fn``; returns its tensor outputs (the structure of the first call is remembered)."""
        leaves = list(self.arg_leaves)
        for slot, tensor in zip(self.tensor_slots, tensors):
            leaves[slot] = tensor
        out_leaves, out_spec = pytree.tree_flatten(self.fn(*pytree.tree_unflatten(leaves, self.args_spec)))
        if self.out_spec is None:
            self.out_spec = out_spec
            self.out_is_tensor = [isinstance(leaf, torch.Tensor) for leaf in out_leaves]
            self.out_leaves = [None if t else leaf for t, leaf in zip(self.out_is_tensor, out_leaves)]
        return [leaf for leaf in out_leaves if isinstance(leaf, torch.Tensor)]

    def rebuild(self, tensors) -> Any:
        """The forward output with ``tensors`` in place of its tensor leaves."""
        it = iter(tensors)
        leaves = [next(it) if t else leaf for t, leaf in zip(self.out_is_tensor, self.out_leaves)]
        return pytree.tree_unflatten(leaves, self.out_spec)


class _Recompute(torch.autograd.Function):
    """Runs a segment without saving its internals; backward recomputes it and back-propagates."""

    @staticmethod
    def forward(ctx, segment: _Segment, *inputs):
        ctx.segment = segment
        ctx.rng_states = _rng_states()
        with torch.no_grad():
            outputs = segment.call(inputs)
        # Boolean/integer outputs (routing map, counts) cannot carry gradients; keep them to check
        # that recomputation reproduces them.
        ctx.num_inputs = len(inputs)
        ctx.discrete = [i for i, out in enumerate(outputs) if not out.is_floating_point()]
        discrete = [outputs[i] for i in ctx.discrete]
        ctx.mark_non_differentiable(*discrete)
        ctx.save_for_backward(*inputs, *discrete)
        return tuple(outputs)

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        inputs, discrete = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        detached = [
            x.detach().requires_grad_(need and x.is_floating_point())
            for x, need in zip(inputs, ctx.needs_input_grad[1:])
        ]
        backward_states = _rng_states()
        _set_rng_states(ctx.rng_states)
        try:
            with torch.enable_grad():
                outputs = ctx.segment.call(detached)
        finally:
            _set_rng_states(backward_states)
        for i, kept in zip(ctx.discrete, discrete):
            if not torch.equal(outputs[i], kept):
                raise RuntimeError(
                    "MoE-aware recomputation: the recomputed routing differs from the forward pass "
                    "(the router is not deterministic given its RNG state)"
                )
        pairs = [(out, g) for out, g in zip(outputs, grads) if g is not None and out.requires_grad]
        if pairs:
            torch.autograd.backward([out for out, _ in pairs], [g for _, g in pairs])
        return (None, *[x.grad if x.requires_grad else None for x in detached])


def checkpoint(fn: Callable, *args: Any) -> Any:
    """``fn(*args)`` whose internals are recomputed in backward instead of kept.

    Keeps the tensors among ``args`` and the non-float tensors ``fn`` returns. Outside autograd
    (evaluation, ``no_grad``) it simply calls ``fn``.
    """
    if not torch.is_grad_enabled():
        return fn(*args)
    segment = _Segment(fn, args)
    outputs = _Recompute.apply(segment, *segment.take_inputs())
    return segment.rebuild(outputs)


@dataclass(frozen=True)
class MoERecompute:
    """The MoE layer's recomputation policy (``--moe-recompute``).

    Call it like the segment function: ``recompute(fn, *args)`` runs ``fn`` plainly (``none``) or
    through :func:`checkpoint` (``moe_aware``).
    """

    mode: str = "none"

    def __post_init__(self) -> None:
        if self.mode not in RECOMPUTE_MODES:
            raise InputError(f"--moe-recompute {self.mode!r} is not one of {RECOMPUTE_MODES}")

    def __call__(self, fn: Callable, *args: Any) -> Any:
        if self.mode == "moe_aware":
            return checkpoint(fn, *args)
        return fn(*args)
