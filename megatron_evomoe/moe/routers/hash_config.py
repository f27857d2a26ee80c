"""Hash-layer router (Roller et al. 2021, "Hash Layers For Large Sparse Models").

This router's ``Config`` (the gate itself is in ``hash.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router_config import RouterConfig


@dataclass
class HashConfig(RouterConfig):
    """Fixed token-id -> expert routing from a random or frequency-balanced table."""

    aux_loss_coeff: float = 0.0
    """Fixed routing: nothing to balance."""
    hash_type: Literal["random", "balanced"] = "random"
    """'random' (a fixed random token->expert table per layer) or 'balanced' (built from
    training-data token frequencies, most frequent tokens first into the emptiest expert)."""
    hash_frequency_samples: int = 2000
    """Training samples read to count token frequencies for the balanced hash."""

    TOPK_CHOICES = (1,)
    TOPK_REASON = "a hash layer maps each token id to one expert (Roller et al. 2021)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hash_type not in ("random", "balanced"):
            raise InputError(f"--hash-type must be 'random' or 'balanced', got {self.hash_type!r}")
        if self.hash_frequency_samples < 1:
            raise InputError("--hash-frequency-samples must be >= 1")
