"""Process groups and seeds: torch.distributed (NCCL on GPU, gloo on CPU) and megatron parallel_state.

Works for a single process (no launcher) and under ``torchrun`` (``RANK``/``WORLD_SIZE``/
``MASTER_ADDR``/``MASTER_PORT`` in the environment).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from megatron_evomoe import compat
from megatron_evomoe.device import device_is_cuda
from megatron_evomoe.errors import InputError


@dataclass(frozen=True)
class ParallelLayout:
    """Sizes of the parallel dimensions; the data-parallel size is what remains of the world."""

    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    expert_model_parallel_size: int = 1
    expert_tensor_parallel_size: int | None = None

    def data_parallel_size(self, world_size: int) -> int:
        """Data-parallel size of the dense part of the model."""
        return world_size // (self.tensor_model_parallel_size * self.pipeline_model_parallel_size)

    def validate(self, world_size: int) -> None:
        """Raise ValueError when the layout does not tile the world."""
        tp, pp, ep = (
            self.tensor_model_parallel_size,
            self.pipeline_model_parallel_size,
            self.expert_model_parallel_size,
        )
        if min(tp, pp, ep) < 1:
            raise InputError("parallel sizes must be >= 1")
        if world_size % (tp * pp) != 0:
            raise InputError(
                f"world size {world_size} is not divisible by --tensor-model-parallel-size {tp} x "
                f"--pipeline-model-parallel-size {pp}"
            )
        etp = self.expert_tensor_parallel_size or tp
        if world_size % (etp * ep * pp) != 0:
            raise InputError(
                f"world size {world_size} is not divisible by --expert-tensor-parallel-size {etp} x "
                f"--expert-model-parallel-size {ep} x --pipeline-model-parallel-size {pp}"
            )


def initialize_distributed(timeout_minutes: int = 30) -> None:
    """Start torch.distributed if it is not running yet.

    Without a launcher this is a world of one process (an in-process store). On CUDA each rank
    takes the GPU ``LOCAL_RANK`` and NCCL; on CPU gloo.
    """
    if dist.is_initialized():
        return
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    store = None
    if "MASTER_ADDR" not in os.environ:
        if world_size != 1:
            raise InputError("WORLD_SIZE > 1 needs MASTER_ADDR/MASTER_PORT (launch with torchrun)")
        # A world of one needs no rendezvous: an in-process store avoids racing for a TCP port.
        store = dist.HashStore()
    if device_is_cuda():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(
        backend=backend,
        rank=rank,
        world_size=world_size,
        timeout=timedelta(minutes=timeout_minutes),
        store=store,
    )


def initialize_model_parallel(layout: ParallelLayout) -> None:
    """Create megatron's TP/PP/EP/DP process groups (after :func:`initialize_distributed`)."""
    layout.validate(dist.get_world_size())
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor_model_parallel_size,
        pipeline_model_parallel_size=layout.pipeline_model_parallel_size,
        expert_model_parallel_size=layout.expert_model_parallel_size,
        expert_tensor_parallel_size=layout.expert_tensor_parallel_size,
    )


def set_seeds(seed: int) -> None:
    """Seed python, numpy and torch, and megatron's tracked RNG states.

    Parameter initialisation does not depend on these (see ``models.init``); they drive dropout,
    gumbel noise and other per-step randomness. The data-parallel stream gets ``seed`` on every
    rank; megatron's tracker adds the tensor-parallel and expert-parallel streams.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed, force_reset_rng=True)


def adapt_megatron() -> None:
    """megatron-core's fixes on every device, and its CUDA-only sites redirected on a CPU run."""
    if device_is_cuda():
        compat.apply_megatron_fixes()
    else:
        compat.apply_cpu_adaptations()


def initialize(layout: ParallelLayout, seed: int, timeout_minutes: int = 30) -> None:
    """Everything a training script needs before it builds a model, in the order that works."""
    adapt_megatron()
    initialize_distributed(timeout_minutes)
    initialize_model_parallel(layout)
    set_seeds(seed)


def shutdown() -> None:
    """Tear down process groups (a gloo world left open can abort at interpreter exit)."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
