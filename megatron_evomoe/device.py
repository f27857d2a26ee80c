"""Where this rank computes: the one "is this a CUDA run?" answer, moving a batch there, and whether
torch's grouped GEMM runs on it.

Every module that only needs to know the device (or to move a batch to it) asks here; ``compat.py``
is imported only where megatron-core's CUDA assumptions are adapted. ``EVOMOE_FORCE_CPU=1`` runs
the CPU path on a machine with GPUs.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any, Dict, List

import torch

logger = logging.getLogger(__name__)


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


@functools.lru_cache(maxsize=None)
def grouped_mm_available(device: torch.device, dtype: torch.dtype, hidden: int, ffn_in: int, ffn_out: int) -> bool:
    """Whether ``torch._grouped_mm`` runs the expert FFN's GEMMs on ``device`` in ``dtype``.

    torch 2.13 has kernels for CPU (fp32, bf16, fp16) and for CUDA on Hopper and newer (bf16); all
    need rows of a multiple of 16 bytes. The probe runs the three layouts the experts use (forward,
    input gradient, weight gradient) on two tiny groups of the real widths (``ffn_in``: fc1's
    output, ``ffn_out``: fc2's input, which differ for GLU); the answer is cached, so a missing
    kernel is logged once per configuration.
    """
    reason = None
    if not hasattr(torch, "_grouped_mm"):
        reason = f"torch {torch.__version__} has no torch._grouped_mm"
    else:
        try:
            x = torch.ones(3, hidden, device=device, dtype=dtype)
            w1 = torch.ones(2, ffn_in, hidden, device=device, dtype=dtype)
            grad = torch.ones(3, ffn_in, device=device, dtype=dtype)
            offs = torch.tensor([1, 3], device=device, dtype=torch.int32)
            torch._grouped_mm(x, w1.transpose(1, 2), offs=offs)
            torch._grouped_mm(grad, w1, offs=offs)
            torch._grouped_mm(grad.t(), x, offs=offs)
            w2 = torch.ones(2, hidden, ffn_out, device=device, dtype=dtype)
            torch._grouped_mm(torch.ones(3, ffn_out, device=device, dtype=dtype), w2.transpose(1, 2), offs=offs)
        except (RuntimeError, NotImplementedError, TypeError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    if reason is not None:
        logger.warning(
            "--moe-grouped-gemm: torch._grouped_mm cannot run the experts on %s in %s with hidden %d "
            "and FFN %d (%s); the experts run one GEMM per expert instead",
            device, dtype, hidden, ffn_out, reason,
        )
        return False
    return True
