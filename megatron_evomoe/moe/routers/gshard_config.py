"""GShard top-2 router (Lepikhin et al. 2020, "GShard", sec. 2.2 and Algorithm 1).

This router's ``Config`` (the gate itself is in ``gshard.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_evomoe.moe.router_config import RouterConfig


@dataclass
class GShardConfig(RouterConfig):
    """Top-2 gate with the GShard balance loss and random routing of the second expert."""

    aux_loss_coeff: float = 0.01
    """GShard's alpha (as in fairseq and megatron): 1e-2."""
    topk: int = 2
    """GShard is a top-2 gate."""
    gshard_random_routing: bool = True
    """In training, use the 2nd expert only if 2*g2 > U(0,1), g2 normalised over the top-2 (GShard
    Algorithm 1; --no-gshard-random-routing: always both experts)."""

    TOPK_CHOICES = (2,)
    TOPK_REASON = "GShard is top-2 by definition (Lepikhin et al. 2020; its random routing is of the 2nd expert)"
    BALANCE_LOSS = True
    ROUTER_LOGITS = True
