"""What every router's ``Config`` has, and the routing state a router runs in.

Each router file (``moe/routers/<name>.py``) nests a ``Config(RouterConfig)`` dataclass: its
hyper-parameters (fields, defaults and docstrings, from which ``arguments.py`` generates the flags,
``config_flags.py``), their validation, their defaults that depend on the run (:meth:`RouterConfig.
resolved`), and its phases as pure functions of the iteration (:meth:`RouterConfig.routing_state`).
The fields declared here are the flags every router shares (``--moe-aux-loss-coeff``,
``--moe-router-topk``); a router gives them its own default by declaring the field again (plainly:
the flag's name and help stay those declared here).

No megatron-core import: tools that only plan runs read schedules without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from megatron_evomoe.config_flags import flag
from megatron_evomoe.errors import InputError

SPARSE = "sparse"
"""The phase of a router whose routing never changes with the iteration."""


@dataclass(frozen=True)
class RoutingState:
    """Per-step state pushed by the phase controller before each optimizer step.

    Attributes:
        iteration: the optimizer step about to run (0-based).
        phase: router-specific phase name (EvoMoE: ``expert_diversify``, ``gate_sparsify``,
            ``top1``; StableMoE: ``stage1``, ``stage2``; others: ``sparse``).
        temperature: gate temperature (EvoMoE's tau); 1.0 where unused.
    """

    iteration: int = 0
    phase: str = SPARSE
    temperature: float = 1.0


@dataclass(frozen=True)
class RunShape:
    """What a router's run-dependent defaults are computed from (:meth:`RouterConfig.resolved`)."""

    train_iters: int
    tokens_per_microbatch: int
    """--micro-batch-size x --seq-length."""
    use_distributed_optimizer: bool = False


@dataclass
class RouterConfig:
    """Hyper-parameters every router has; a router's ``Config`` subclasses this."""

    aux_loss_coeff: float = flag(0.01, name="--moe-aux-loss-coeff")
    """Weight of the router's balance loss (0: none); default per router, from its paper."""
    topk: int = flag(1, name="--moe-router-topk")
    """Experts per token, k (DSelect-k: its number of selectors); default per router."""

    TOPK_CHOICES = None
    """The only top-k values the router accepts (None: any k in [1, --num-experts])."""
    TOPK_REASON = ""
    """Why a router with :attr:`TOPK_CHOICES` takes no other k (its paper's definition), for the error."""
    METHOD_NAME = None
    """The method the router belongs to, where it has a name of its own (DTS: EvoMoE); shown in the
    title of the router's flag group in ``--help``."""

    def __post_init__(self) -> None:
        if self.TOPK_CHOICES is not None and self.topk not in self.TOPK_CHOICES:
            raise InputError(self.topk_message())
        if self.aux_loss_coeff < 0:
            raise InputError("--moe-aux-loss-coeff must be >= 0")

    def topk_message(self) -> str:
        """The error for a top-k outside :attr:`TOPK_CHOICES`."""
        allowed = " or ".join(str(k) for k in self.TOPK_CHOICES)
        reason = f": {self.TOPK_REASON}" if self.TOPK_REASON else ""
        return f"--moe-router-topk {self.topk}: this router takes k = {allowed} only{reason}"

    # ------------------------------------------------------------------ run-dependent defaults
    def resolved(self, run: RunShape) -> "RouterConfig":
        """This config with the defaults that depend on the run filled in (validated again)."""
        return self

    def replace(self, **changes: Any) -> "RouterConfig":
        """A copy with ``changes`` (validated by ``__post_init__``)."""
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------------------------- phases
    def routing_state(self, iteration: int) -> RoutingState:
        """The state every router sees during step ``iteration`` (a pure function: resume is exact)."""
        return RoutingState(iteration=iteration, phase=SPARSE)

    def schedule_end(self) -> int:
        """The first iteration from which the routing state no longer changes."""
        return 0

    def final_state(self, train_iters: Optional[int] = None) -> RoutingState:
        """The state the model is served with: that of the last training step, ``train_iters - 1``.

        So the gate after training computes what the last step trained (EvoMoE's Top-1 at the final
        tau, StableMoE's frozen router -- or the stage a shorter run ended in). Without
        ``train_iters`` (a model whose training length is unknown): the state once every phase of
        the schedule has begun.
        """
        if train_iters is None:
            train_iters = self.schedule_end() + 1
        return self.routing_state(max(train_iters - 1, 0))

    def serving_state(self, iteration: int, train_iters: int) -> Optional[RoutingState]:
        """The final state where evaluating in it differs from evaluating step ``iteration``'s
        (``--eval-as-served``); None where the step's own evaluation already is the served one."""
        return None

    def shared_expert_stage(self, state: RoutingState) -> bool:
        """Whether every token goes through one shared expert (no gate, no balance loss) in ``state``."""
        return False

    def needs_shared_expert(self) -> bool:
        """Whether the MoE layers build a shared expert (EvoMoE's stage 1)."""
        return False

    def diversify_iteration(self) -> Optional[int]:
        """The step before which experts are spawned from the shared expert (None: never)."""
        return None

    def spawned_experts_flags(self, iteration: int) -> List[str]:
        """This router's flags under which a run whose experts were spawned before step
        ``iteration`` (an upcycled checkpoint) starts its routing there; [] where no flag is needed."""
        return []

    def check_spawned_experts(self, iteration: int) -> None:
        """Raise InputError when this run spawns its experts at another step than ``iteration``,
        the step before which the loaded checkpoint's experts were spawned."""
        planned = self.diversify_iteration()
        if planned is not None and planned != iteration:
            raise InputError(
                f"the checkpoint's experts were spawned before iteration {iteration} (expert-diversify or "
                f"tools/upcycle_checkpoint.py), this run would spawn them before iteration {planned}: pass "
                + " ".join(self.spawned_experts_flags(iteration))
            )

    def schedule_meta(self) -> Dict[str, Any]:
        """The resolved phase boundaries (run metadata, checkpoints); empty for one phase."""
        return {}

    def transition_name(self, old_phase: str, new_phase: str) -> str:
        """The name of a phase change in the logs (``--log-moe-diagnostics``' loss jumps)."""
        return new_phase

    def describe_schedule(self, train_iters: int) -> Optional[str]:
        """One start-up line with the resolved phase boundaries (None for one phase)."""
        return None

    def peak_experts_per_token(self, num_experts: int) -> float:
        """The most experts a token visits in any phase (``--dry-run``'s activation peak)."""
        return float(self.topk)
