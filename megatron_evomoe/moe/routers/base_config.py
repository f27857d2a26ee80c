"""BASE layer router (Lewis et al. 2021, "BASE Layers").

This router's ``Config`` (the gate itself is in ``base.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router_config import RouterConfig


@dataclass
class BaseConfig(RouterConfig):
    """Balanced assignment (auction algorithm) in training, greedy top-1 at inference."""

    aux_loss_coeff: float = 0.0
    """BASE layers balance by construction: no aux loss."""
    base_auction_epsilon: float = 1e-4
    """The auction's bid increment relative to the score range; the assignment's total score is
    within T * epsilon * range of the optimum (smaller is more exact, may take more rounds)."""
    base_auction_max_rounds: int = 10000
    """Cap on bidding rounds; afterwards the remaining tokens fill free slots greedily."""

    TOPK_CHOICES = (1,)
    TOPK_REASON = "BASE layers assign each token to exactly one expert (a linear assignment, Lewis et al. 2021)"
    ROUTER_LOGITS = True  # the token-expert scores h . w_e

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_auction_epsilon <= 0:
            raise InputError("--base-auction-epsilon must be > 0")
        if self.base_auction_max_rounds < 1:
            raise InputError("--base-auction-max-rounds must be >= 1")
