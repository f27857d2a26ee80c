"""Where this rank computes: the one "is this a CUDA run?" answer, and moving a batch there.

Every module that only needs to know the device (or to move a batch to it) asks here; ``compat.py``
is imported only where megatron-core's CUDA assumptions are adapted. ``EVOMOE_FORCE_CPU=1`` runs
the CPU path on a machine with GPUs.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List

import torch


def device_is_cuda() -> bool:
    """True when training runs on CUDA GPUs (``EVOMOE_FORCE_CPU=1`` forces the CPU path)."""
    return torch.cuda.is_available() and os.environ.get("EVOMOE_FORCE_CPU", "0") != "1"


def transformer_engine_available() -> bool:
    """True when Transformer Engine imports (then the TE layer spec is used on GPU)."""
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        return False
    return True


def use_transformer_engine() -> bool:
    """TE layer specs only on CUDA with Transformer Engine installed."""
    return device_is_cuda() and transformer_engine_available()


def batch_to_device(batch: Dict[str, Any]) -> Dict[str, Any]:
    """A collated batch with its tensors on this rank's GPU (unchanged on the CPU)."""
    if not device_is_cuda():
        return batch
    return {k: v.cuda(non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def rng_devices() -> List[int]:
    """The CUDA devices whose RNG ``torch.random.fork_rng`` must save and restore (none on the CPU)."""
    return [torch.cuda.current_device()] if device_is_cuda() else []
