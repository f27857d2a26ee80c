"""Switch Transformer top-1 router (Fedus et al. 2021, "Switch Transformers").

This router's ``Config`` (the gate itself is in ``switch.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_evomoe.config_flags import flag
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router_config import RouterConfig

SWITCH_JITTER_EPS = 1e-2
"""Default eps of the router-input jitter: input jitter was the best exploration strategy in Switch
Transformers' Table 11; 1e-2 is the authors' Mesh TensorFlow default (``switch_jitter``)."""


@dataclass
class SwitchConfig(RouterConfig):
    """Top-1 gate with the Switch balance loss and multiplicative jitter on the router input."""

    aux_loss_coeff: float = 0.01
    """Switch sec. 2.2: alpha = 1e-2."""
    jitter_eps: float = flag(SWITCH_JITTER_EPS, name="--moe-input-jitter-eps")
    """Multiplicative jitter U(1-eps, 1+eps) on the router input in training (the Switch paper's eps;
    0 turns it off)."""

    TOPK_CHOICES = (1,)
    TOPK_REASON = "Switch is top-1 by definition (Fedus et al. 2021: one expert per token)"
    BALANCE_LOSS = True
    ROUTER_LOGITS = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.jitter_eps < 1.0:
            raise InputError("--moe-input-jitter-eps must be in [0, 1)")
