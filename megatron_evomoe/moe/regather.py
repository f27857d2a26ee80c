"""Do not keep the permuted expert input for backward when its rows can be gathered again.

The experts' first GEMM keeps its input, the token rows permuted into expert order (``[M, h]``),
for its weight gradient. Where the dispatcher built that tensor by a local gather,
``rows = source.index_select(0, index)``, with ``source`` the layer input (which the router keeps
anyway), keeping the permuted copy only duplicates it. Inside :class:`RegatherOnBackward`, every
tensor saved for backward that lies in the storage of ``rows`` (the tensor itself or the views the
per-expert loop splits from it) is replaced by its position in that storage; in backward the rows
are gathered once more from ``source`` (a copy, no FLOPs) and the saved views are cut from them.
Other saved tensors go to the hooks that were active around the context (activation offloading,
``SavedTensorMeter``), so the context composes with them.
"""

from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch


class _Slot:
    """Where a saved tensor sat in the storage of the permuted rows."""

    __slots__ = ("recipe", "shape", "stride", "offset")

    def __init__(self, recipe: "RegatherOnBackward", tensor: torch.Tensor):
        self.recipe = recipe
        self.shape, self.stride, self.offset = tensor.shape, tensor.stride(), tensor.storage_offset()


class _Outer:
    """A tensor handed to the enclosing saved-tensor hooks, and how to get it back."""

    __slots__ = ("packed", "unpack")

    def __init__(self, packed: Any, unpack):
        self.packed, self.unpack = packed, unpack


def _enclosing_hooks():
    """The (pack, unpack) pair active before ours, or None (torch has no public accessor)."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    return top(False) if top is not None else None


class RegatherOnBackward:
    """``saved_tensors_hooks`` context: saved views of ``rows`` become ``source[index]`` again.

    Args:
        rows: the permuted rows ``[M, h]``, contiguous, ``rows == source.index_select(0, index)``.
        source: ``[T, h]`` rows they were gathered from (kept alive until backward).
        index: ``[M]`` int64 row of ``source`` for each row of ``rows``.
    """

    def __init__(self, rows: torch.Tensor, source: torch.Tensor, index: torch.Tensor):
        if not rows.is_contiguous() or rows.storage_offset() != 0:
            raise ValueError("RegatherOnBackward needs the gathered rows as a fresh contiguous tensor")
        # Only the address: holding ``rows`` itself would keep it alive, which is what is avoided.
        self._storage = rows.untyped_storage().data_ptr()
        self._shape, self._dtype = rows.shape, rows.dtype
        self._source, self._index = source.detach(), index
        self._rebuilt: Optional[torch.Tensor] = None
        self._outer = _enclosing_hooks()
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def __enter__(self) -> "RegatherOnBackward":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _pack(self, tensor: torch.Tensor) -> Any:
        if tensor.untyped_storage().data_ptr() == self._storage and tensor.dtype == self._dtype:
            return _Slot(self, tensor)
        if self._outer is not None:
            pack, unpack = self._outer
            return _Outer(pack(tensor), unpack)
        return tensor

    @staticmethod
    def _unpack(packed: Any) -> torch.Tensor:
        if isinstance(packed, _Outer):
            return packed.unpack(packed.packed)
        if not isinstance(packed, _Slot):
            return packed
        recipe = packed.recipe
        if recipe._rebuilt is None:  # gathered once per backward, shared by all saved views
            with torch.no_grad():
                recipe._rebuilt = recipe._source.index_select(0, recipe._index).to(recipe._dtype)
        return recipe._rebuilt.as_strided(packed.shape, packed.stride, packed.offset)


def regather_on_backward(rows: torch.Tensor, recipe: Optional[tuple[torch.Tensor, torch.Tensor]]):
    """:class:`RegatherOnBackward` for ``rows`` when ``recipe = (source, index)`` is given, else a
    context that changes nothing."""
    if recipe is None or not torch.is_grad_enabled():
        return contextlib.nullcontext()
    source, index = recipe
    return RegatherOnBackward(rows, source, index)
