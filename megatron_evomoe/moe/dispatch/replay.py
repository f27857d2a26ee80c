"""All-to-all replay for the paper's MoE-aware recomputation (EvoMoE sec. IV).

Under ``--recompute-granularity full`` megatron keeps only each transformer layer's input and runs
the layer twice: once without autograd in the forward pass, and again in backward to rebuild the
graph. Re-running the MoE layer's all-to-alls there is what makes full recomputation expensive.
With ``--moe-recompute moe_aware`` as well, every *forward* exchange of the layer's dispatcher
(counts, dispatch, combine, and the expert-TP gather/reduce-scatter) records what it received in the
first pass and hands it back in the recomputation, without communicating; the exchanges of backward
itself (``*_grad``, the gradients going back) always communicate.

What stays in memory per MoE layer and in-flight micro-batch: the token counts, and the *last*
exchange of the dispatch (the tokens arriving at the experts) and of the combine (the expert
outputs arriving back) -- the paper's "input tensors of the two all-to-alls"; everything else of
the layer is recomputed. The intermediate phases of a multi-phase route (hierarchical) keep only
their shapes: in the recomputation their values feed nothing but the next phase's send, which is
replayed, and backward through an exchange or a permutation never reads values.

Recordings are consumed first-in first-out: megatron's schedules run the backward passes of
micro-batches in the order of their forward passes (no pipelining and 1F1B alike), and a layer's
exchanges happen in the same order in both passes because the recomputation restores the RNG
state (same routing).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Deque, TypeVar

import torch

T = TypeVar("T")

OFF, RECORD, REPLAY = "off", "record", "replay"
# Exchanges whose intermediate phases' values are needed by local computation (kept in full).
_KEEP_ALL_PHASES = ("counts",)


def recompute_phase() -> str:
    """``record`` in megatron's checkpointed forward pass, ``replay`` in its recomputation, else ``off``.

    Call it outside autograd functions (grad mode is always off inside their ``forward``).
    """
    from megatron.core.tensor_parallel.random import is_checkpointing  # megatron only when training

    if not is_checkpointing():
        return OFF
    return REPLAY if torch.is_grad_enabled() else RECORD


@dataclass
class _Recording:
    kind: str
    result: Any
    placeholder: bool = False


def _shape_only(result: Any) -> Any:
    if isinstance(result, torch.Tensor):
        return (tuple(result.shape), result.dtype, result.device)
    return [_shape_only(item) for item in result]


def _materialise(spec: Any) -> Any:
    if isinstance(spec, tuple):
        shape, dtype, device = spec
        return torch.empty(shape, dtype=dtype, device=device)
    return [_materialise(item) for item in spec]


def _nbytes(result: Any) -> int:
    if isinstance(result, torch.Tensor):
        return result.numel() * result.element_size()
    if isinstance(result, (list, tuple)):
        return sum(_nbytes(item) for item in result)
    return 0


class ExchangeReplay:
    """FIFO of forward-exchange results of one dispatcher (one MoE layer).

    The dispatcher calls :meth:`start` when a dispatch begins: exchanges run inside autograd
    functions, where grad mode is always off, so the pass is identified before entering them.
    """

    def __init__(self) -> None:
        self._recorded: Deque[_Recording] = deque()
        self.phase = OFF

    def __len__(self) -> int:
        return len(self._recorded)

    def start(self) -> None:
        """Note whether this forward pass is megatron's first pass, its recomputation, or neither."""
        self.phase = recompute_phase()

    def recorded_bytes(self) -> int:
        """Bytes held by recordings not yet replayed (activation memory of this mode)."""
        return sum(_nbytes(r.result) for r in self._recorded if not r.placeholder)

    def run(self, kind: str, exchange: Callable[[], T]) -> T:
        """``exchange()`` -- or its recorded result when megatron is recomputing the layer."""
        if kind.endswith("_grad") or self.phase == OFF:
            return exchange()
        if self.phase == RECORD:
            result = exchange()
            tail = self._recorded[-1] if self._recorded else None
            if tail is not None and tail.kind == kind and kind not in _KEEP_ALL_PHASES:
                # The previous phase of this route is an intermediate one: keep its shape only.
                tail.result, tail.placeholder = _shape_only(tail.result), True
            self._recorded.append(_Recording(kind, result))
            return result
        if not self._recorded or self._recorded[0].kind != kind:
            found = self._recorded[0].kind if self._recorded else "nothing"
            raise RuntimeError(f"MoE-aware recomputation: expected to replay a {kind} exchange, found {found}")
        recording = self._recorded.popleft()
        return _materialise(recording.result) if recording.placeholder else recording.result
