"""Row-aligned tensors of any dtypes <-> one byte matrix, so one message carries them all.

A dispatch moves, for every (token, expert) pair, a hidden row ``[h]`` (fp32 / bf16 / fp16) and its
gate weight (fp32). Packing both into one ``uint8 [M, h * itemsize + 4]`` matrix halves the number of
messages (latency dominates small all-to-alls) and makes the transport dtype-agnostic: gloo and NCCL
both move bytes, whatever dtypes the tensors have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class RowSpec:
    """What one packed tensor looks like: ``[rows, *trailing]`` of ``dtype``."""

    dtype: torch.dtype
    trailing: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        numel = 1
        for dim in self.trailing:
            numel *= dim
        return numel * torch.empty((), dtype=self.dtype).element_size()


def row_specs(tensors: Sequence[torch.Tensor]) -> tuple[RowSpec, ...]:
    """The specs of row-aligned tensors (all share dim 0)."""
    return tuple(RowSpec(t.dtype, tuple(t.shape[1:])) for t in tensors)


def pack_rows(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``uint8 [M, sum of row bytes]``; a view (no copy) for a single contiguous tensor."""
    rows = tensors[0].shape[0]
    views = [t.contiguous().reshape(rows, _row_numel(t)).view(torch.uint8) for t in tensors]
    return views[0] if len(views) == 1 else torch.cat(views, dim=1)


def _row_numel(tensor: torch.Tensor) -> int:
    numel = 1
    for dim in tensor.shape[1:]:
        numel *= dim
    return numel


def unpack_rows(packed: torch.Tensor, specs: Sequence[RowSpec]) -> list[torch.Tensor]:
    """Inverse of :func:`pack_rows` for ``packed`` ``uint8 [M, B]``."""
    rows = packed.shape[0]
    out, offset = [], 0
    for spec in specs:
        width = spec.row_bytes
        if rows == 0:
            out.append(torch.empty((0, *spec.trailing), dtype=spec.dtype, device=packed.device))
        else:
            block = packed[:, offset : offset + width]
            if len(specs) > 1:
                block = block.clone()  # a column slice: copy to an aligned buffer before reinterpreting
            out.append(block.view(spec.dtype).reshape(rows, *spec.trailing))
        offset += width
    return out
