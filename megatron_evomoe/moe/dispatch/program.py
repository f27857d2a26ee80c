"""A route compiled for execution: layout transforms inserted, row counts bound every step.

:class:`CompiledRoute` walks a :class:`~routes.Route` once: wherever the buffer's chunk order
differs from the next phase's send order (or from the target), it inserts a
:class:`ChunkPermutation`. Each step, :meth:`CompiledRoute.bind` turns chunk orders into row
indices and phases into row counts from the count matrix ``C`` (flattened: ``sizes[s * E + e]``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

from megatron_evomoe.moe.dispatch.routes import Block, Route


def exclusive_cumsum(values: torch.Tensor) -> torch.Tensor:
    return torch.cumsum(values, 0) - values


class ChunkPermutation:
    """Reorder a buffer whose chunks are in order ``before`` into order ``after`` (same chunks).

    Args:
        before: chunk ids as they sit in the buffer.
        after: the same chunk ids in the wanted order.
    """

    def __init__(self, before: Sequence[int], after: Sequence[int]):
        position = {chunk: i for i, chunk in enumerate(before)}
        self.before = torch.tensor(list(before), dtype=torch.long)
        self.after = torch.tensor(list(after), dtype=torch.long)
        self.position = torch.tensor([position[chunk] for chunk in after], dtype=torch.long)

    def rows(self, sizes: torch.Tensor) -> torch.Tensor:
        """``index`` such that ``buffer_after = buffer_before[index]``, for chunk sizes ``sizes``."""
        starts_before = exclusive_cumsum(sizes[self.before])
        lengths = sizes[self.after]
        shift = starts_before[self.position] - exclusive_cumsum(lengths)
        total = int(lengths.sum())
        return torch.repeat_interleave(shift, lengths, output_size=total) + torch.arange(total)


@dataclass(frozen=True)
class Permute:
    """A layout transform: ``out = buffer[index]``; combine undoes it with ``inverse``."""

    index: torch.Tensor
    inverse: torch.Tensor


@dataclass(frozen=True)
class Exchange:
    """A phase with row counts: ``(peer, rows)`` sent (buffer order) and received (arrival order)."""

    send: tuple[tuple[int, int], ...]
    recv: tuple[tuple[int, int], ...]
    collective: bool
    tag: int

    def reversed(self) -> "Exchange":
        """The same phase run backwards (combine, and the gradient of dispatch)."""
        return Exchange(self.recv, self.send, self.collective, self.tag)

    @property
    def rows_sent(self) -> int:
        return sum(rows for _, rows in self.send)

    @property
    def rows_received(self) -> int:
        return sum(rows for _, rows in self.recv)


Step = Union[Permute, Exchange]


def permute_for(index: torch.Tensor, device: torch.device | None = None) -> Permute:
    """The :class:`Permute` of row index ``index`` (and its inverse), moved to ``device``."""
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel())
    return Permute(index.to(device), inverse.to(device)) if device is not None else Permute(index, inverse)


class _BlockRows:
    """Row counts of a phase's blocks from chunk sizes, in one vectorised sum."""

    def __init__(self, blocks: Sequence[Block]):
        self.peers = [peer for peer, _ in blocks]
        ids = [chunk for _, chunks in blocks for chunk in chunks]
        owner = [i for i, (_, chunks) in enumerate(blocks) for _ in chunks]
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.owner = torch.tensor(owner, dtype=torch.long)

    def bind(self, sizes: torch.Tensor) -> tuple[tuple[int, int], ...]:
        rows = torch.zeros(len(self.peers), dtype=torch.long).index_add_(0, self.owner, sizes[self.ids])
        return tuple(zip(self.peers, rows.tolist()))


class CompiledRoute:
    """A route ready to run: ``bind(sizes)`` gives the steps of one dispatch.

    Args:
        route: this rank's route.
    """

    def __init__(self, route: Route):
        self.name = route.name
        self._steps: list = []
        layout = route.source
        for tag, phase in enumerate(route.phases):
            if phase.collective and [p for p, _ in phase.send] != list(range(len(phase.send))):
                raise ValueError(f"{route.name}: a collective phase must list every peer in rank order")
            wanted = tuple(chunk for _, chunks in phase.send for chunk in chunks)
            if wanted != layout:
                self._steps.append(ChunkPermutation(layout, wanted))
            self._steps.append((_BlockRows(phase.send), _BlockRows(phase.recv), phase.collective, tag))
            layout = tuple(chunk for _, chunks in phase.recv for chunk in chunks)
        if layout != route.target:
            self._steps.append(ChunkPermutation(layout, route.target))

    def bind(self, sizes: torch.Tensor, device: torch.device | None = None) -> list[Step]:
        """Concrete steps for chunk sizes ``sizes`` ``[P * E]`` (int64, CPU); indices on ``device``."""
        steps: list[Step] = []
        for step in self._steps:
            if isinstance(step, ChunkPermutation):
                steps.append(permute_for(step.rows(sizes), device))
            else:
                send, recv, collective, tag = step
                steps.append(Exchange(send.bind(sizes), recv.bind(sizes), collective, tag))
        return steps
