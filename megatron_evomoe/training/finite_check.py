"""Are the weights and the optimizer state finite on every rank? Checked before a checkpoint is written
and after one is loaded, so that a NaN or inf never becomes the checkpoint a run resumes from.

The common case costs one pass over the local tensors and one all-reduce of a single number; names
are looked up and gathered only when something is non-finite.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron_evomoe.training.collectives import sum_over_world
from megatron_evomoe.training.optimizer import inner_optimizers
from megatron_evomoe.training.optimizer_state import optimizer_copy


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every element of every tensor is finite (one device sync)."""
    checks = [torch.isfinite(t).all() for t in tensors if torch.is_tensor(t) and t.numel() and t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def first_nonfinite_anywhere(local_name: Optional[str]) -> Optional[str]:
    """The first rank's non-finite tensor name (each rank passes its own or None); collective."""
    flag = torch.tensor([0.0 if local_name is None else 1.0], dtype=torch.float64)
    if float(sum_over_world(flag)[0]) == 0.0:
        return None
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return local_name
    gathered: List[Optional[str]] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local_name)
    return next(name for name in gathered if name is not None)


def first_nonfinite_named(named: Iterable[Tuple[str, torch.Tensor]]) -> Optional[str]:
    """The name of the first non-finite tensor in ``(name, tensor)`` pairs, or None (local)."""
    for name, tensor in named:
        if not all_finite([tensor]):
            return name
    return None


def _optimizer_tensors(optimizer) -> List[torch.Tensor]:
    tensors = []
    for inner in inner_optimizers(optimizer):
        torch_optimizer = inner.optimizer
        for group in torch_optimizer.param_groups:
            tensors.extend(group["params"])
        for state in torch_optimizer.state.values():
            tensors.extend(v for k, v in state.items() if k != "step")
    return tensors


def _named_training_state(model_chunks, optimizer) -> Iterable[Tuple[str, torch.Tensor]]:
    """Each parameter and its optimizer copy (fp32 master weight, Adam moments), by name."""
    for chunk in model_chunks:
        while hasattr(chunk, "module"):  # megatron's DDP and Float16Module wrappers
            chunk = chunk.module
        for name, param in chunk.named_parameters():
            yield name, param
            copy = optimizer_copy(optimizer, param)
            if copy is None:
                continue
            if copy.main is not None and copy.main is not param:
                yield f"{name} (fp32 master weight)", copy.main
            for key, value in copy.state.items():
                if key != "step":
                    yield f"{name} (Adam {key})", value


def first_nonfinite_training_state(model_chunks, optimizer) -> Optional[str]:
    """Name of a non-finite weight or optimizer tensor on any rank, or None; collective."""
    local: Optional[str] = None
    params = [p for chunk in model_chunks for p in chunk.parameters()]
    if not all_finite(params + _optimizer_tensors(optimizer)):
        local = first_nonfinite_named(_named_training_state(model_chunks, optimizer)) or "optimizer state"
    return first_nonfinite_anywhere(local)


def first_nonfinite_loaded(named: List[Tuple[str, torch.Tensor]]) -> Optional[str]:
    """The name of a non-finite tensor among loaded ``(name, tensor)`` pairs on any rank; collective."""
    local = None
    if not all_finite(tensor for _, tensor in named):
        local = first_nonfinite_named(named)
    return first_nonfinite_anywhere(local)
