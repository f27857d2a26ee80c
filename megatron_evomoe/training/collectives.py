"""The one collective the loop's bookkeeping needs: a CPU table summed over every rank."""

from __future__ import annotations

import torch
import torch.distributed as dist


def sum_over_world(table: torch.Tensor) -> torch.Tensor:
    """``table`` (on the CPU) summed over all ranks, returned on the CPU.

    NCCL only reduces CUDA tensors, so the sum travels through the GPU there; gloo sums in place.
    """
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return table
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    reduced = table.to(device)
    dist.all_reduce(reduced)
    return reduced.cpu()
