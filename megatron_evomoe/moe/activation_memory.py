"""Saved-activation accounting: the bytes autograd keeps from forward until backward.

On the CPU there is no ``torch.cuda.max_memory_allocated``; what recomputation changes is the set
of tensors autograd saves for backward, and that set is visible through
``torch.autograd.graph.saved_tensors_hooks``. :class:`SavedTensorMeter` records every tensor saved
inside its context (custom ``Function.save_for_backward`` included, e.g. checkpoint inputs), counts
each underlying storage once (views share storage; a saved view keeps its whole storage alive) and
leaves parameters out (they exist whether or not activations are saved).

It measures what is retained at the end of the forward pass -- the activation peak of training
without pipelining -- not transient buffers inside a layer.
"""

from __future__ import annotations

from typing import Dict, Iterable

import torch


class SavedTensorMeter:
    """Context manager: ``with SavedTensorMeter(model.parameters()) as meter: loss = model(x)``.

    Args:
        exclude: tensors whose storage is not an activation (the model's parameters).
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self._storages: Dict[int, int] = {}
        self._hooks = None

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded:
            self._storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def __enter__(self) -> "SavedTensorMeter":
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def saved_bytes(self) -> int:
        """Bytes of the distinct storages saved so far."""
        return sum(self._storages.values())

    @property
    def num_storages(self) -> int:
        return len(self._storages)


def _storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage().data_ptr()
