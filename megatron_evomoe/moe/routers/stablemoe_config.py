"""StableMoE router (Dai et al. 2022, "StableMoE").

This router's ``Config`` (the gate itself is in ``stablemoe.py``), free of torch so that the flag parser
lists its flags without loading torch or megatron-core (``moe/routers/__init__.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.router_config import RouterConfig, RoutingState, RunShape

STAGE1 = "stage1"
"""Phase of the first ``--stablemoe-stage1-iters`` steps: routing learned and distilled."""
STAGE2 = "stage2"
"""Phase after stage 1: routing frozen (a token-id lookup)."""

STAGE1_PERCENT = 10
"""Stage 1 in percent of --train-iters when --stablemoe-stage1-iters is not given."""


@dataclass
class StableMoEConfig(RouterConfig):
    """Stage 1 learns and distils the routing; stage 2 freezes the distilled router."""

    aux_loss_coeff: float = 0.3
    """StableMoE's balance loss alpha (Dai et al. 2022): 0.3."""
    stablemoe_stage1_iters: Optional[int] = None
    """Iterations of stage 1 (learn + distill routing), frozen afterwards; default 10% of
    --train-iters."""
    stablemoe_distill_coeff: float = 0.3
    """Weight of the distillation cross-entropy, mean over tokens (balance alpha is
    --moe-aux-loss-coeff)."""
    stablemoe_distill_dim: int = 50
    """Dimension of the distilled router's word embedding."""

    TOPK_CHOICES = (1,)
    TOPK_REASON = "StableMoE routes each token to one expert and distils that choice (Dai et al. 2022)"
    BALANCE_LOSS = True
    ROUTER_LOGITS = True  # the backbone centroid scores s_{t,i}

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stablemoe_stage1_iters is not None and self.stablemoe_stage1_iters < 0:
            raise InputError("--stablemoe-stage1-iters must be >= 0")
        if self.stablemoe_distill_coeff < 0:
            raise InputError("--stablemoe-distill-coeff must be >= 0")
        if self.stablemoe_distill_dim < 1:
            raise InputError("--stablemoe-distill-dim must be >= 1")

    def resolved(self, run: RunShape) -> "StableMoEConfig":
        if self.stablemoe_stage1_iters is not None:
            return self
        return self.replace(stablemoe_stage1_iters=max(1, run.train_iters * STAGE1_PERCENT // 100))

    def routing_state(self, iteration: int) -> RoutingState:
        phase = STAGE1 if iteration < self.stablemoe_stage1_iters else STAGE2
        return RoutingState(iteration=iteration, phase=phase)

    def schedule_end(self) -> int:
        return self.stablemoe_stage1_iters

    def schedule_meta(self) -> dict:
        return {"stablemoe_stage1_iters": self.stablemoe_stage1_iters}

    def describe_schedule(self, train_iters: int) -> str:
        stage1 = self.stablemoe_stage1_iters
        return f"StableMoE schedule: stage 1 for {stage1} iterations, routing frozen from iteration {stage1}"

    # serving_state: None, because stage-1 evaluation already routes with the distilled router it
    # will freeze (the module docstring says why).
