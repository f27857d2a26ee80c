"""DSelect-k gate (Hazimeh et al. 2021, "DSelect-k").

This router's ``Config`` (the gate itself is in ``dselectk.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router_config import RouterConfig, RunShape

OFFICIAL_ENTROPY_REG = 1e-6
"""The official code's regularisation parameter (``EntropyRegularizer`` default), applied to the
entropy summed over the examples of a batch."""


def official_entropy_coeff(tokens_per_microbatch: int) -> float:
    """The per-token-mean coefficient equal to the official 1e-6 x sum over a micro-batch."""
    return OFFICIAL_ENTROPY_REG * tokens_per_microbatch


@dataclass
class DSelectKConfig(RouterConfig):
    """k single-expert selectors with smooth-step bits, and an entropy regulariser."""

    aux_loss_coeff: float = 0.0
    """DSelect-k has an entropy regulariser instead (--dselectk-entropy-coeff)."""
    topk: int = 2
    """k single-expert selectors."""
    dselectk_gamma: float = 1.0
    """Smooth-step width gamma: its polynomial region is [-gamma/2, gamma/2] (k is --moe-router-topk)."""
    dselectk_entropy_coeff: Optional[float] = None
    """Weight of the selectors' entropy averaged over tokens (drives the gate to be sparse);
    default: the official code's 1e-6 on a sum over the batch, i.e. 1e-6 x micro-batch tokens."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dselectk_gamma <= 0:
            raise InputError("--dselectk-gamma must be > 0")
        if self.dselectk_entropy_coeff is not None and self.dselectk_entropy_coeff < 0:
            raise InputError("--dselectk-entropy-coeff must be >= 0")

    def resolved(self, run: RunShape) -> "DSelectKConfig":
        if self.dselectk_entropy_coeff is not None:
            return self
        return self.replace(dselectk_entropy_coeff=official_entropy_coeff(run.tokens_per_microbatch))
