"""What every router's ``Config`` has, and the routing state a router runs in.

Each router file (``moe/routers/<name>.py``) nests a ``Config(RouterConfig)`` dataclass: its
hyper-parameters (fields, defaults and docstrings, from which ``arguments.py`` generates the flags,
``config_flags.py``), their validation, their defaults that depend on the run (:meth:`RouterConfig.
resolved`), and its phases as pure functions of the iteration (:meth:`RouterConfig.routing_state`).
The fields declared here are the flags every router shares (``--moe-aux-loss-coeff``,
``--moe-router-topk``, ``--moe-router-load-balancing-type``, ``--moe-z-loss-coeff``); a router gives
them its own default by declaring the field again (plainly: the flag's name and help stay those
declared here).

No megatron-core import: tools that only plan runs read schedules without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional

from megatron_evomoe.config_flags import flag
from megatron_evomoe.errors import InputError
from megatron_evomoe.moe.load_balancing_types import AUX_LOSS, LOAD_BALANCING_TYPES, NONE

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
    load_balancing_type: Literal["aux_loss", "seq_aux_loss", "global_aux_loss", "none"] = flag(
        AUX_LOSS, name="--moe-router-load-balancing-type"
    )
    """Over which tokens the balance loss takes its statistics, as megatron-core: aux_loss (the
    micro-batch; default), seq_aux_loss (each sequence, averaged), global_aux_loss (the global batch:
    all data-parallel ranks and micro-batches), none (no balance loss). Routers without a balance
    loss take only aux_loss or none (moe/load_balancing.py)."""
    z_loss_coeff: Optional[float] = flag(None, name="--moe-z-loss-coeff")
    """Weight of ST-MoE's router z-loss, mean over tokens of logsumexp(router logits)^2 (None or 0:
    off, megatron-core's default; ST-MoE uses 1e-3); routers with logits only."""

    TOPK_CHOICES = None
    """The only top-k values the router accepts (None: any k in [1, --num-experts])."""
    TOPK_REASON = ""
    """Why a router with :attr:`TOPK_CHOICES` takes no other k (its paper's definition), for the error."""
    METHOD_NAME = None
    """The method the router belongs to, where it has a name of its own (DTS: EvoMoE); shown in the
    title of the router's flag group in ``--help``."""

    BALANCE_LOSS = False
    """Whether the router has a balance loss whose statistics ``load_balancing_type`` chooses
    (it calls ``Router.balance_statistics``)."""

    ROUTER_LOGITS = False
    """Whether the router computes logits ``[T, E]`` (x W^T) that the z-loss applies to (it calls
    ``Router.add_z_loss``)."""

    def __post_init__(self) -> None:
        if self.TOPK_CHOICES is not None and self.topk not in self.TOPK_CHOICES:
            raise InputError(self.topk_message())
        if self.aux_loss_coeff < 0:
            raise InputError("--moe-aux-loss-coeff must be >= 0")
        if self.load_balancing_type not in LOAD_BALANCING_TYPES:
            raise InputError(
                f"--moe-router-load-balancing-type {self.load_balancing_type!r} is not one of {LOAD_BALANCING_TYPES}"
            )
        if not self.BALANCE_LOSS and self.load_balancing_type not in (AUX_LOSS, NONE):
            raise InputError(
                f"--moe-router-load-balancing-type {self.load_balancing_type}: this router has no balance loss "
                f"(it takes only {AUX_LOSS} or {NONE})"
            )
        if self.z_loss_coeff is not None and self.z_loss_coeff < 0:
            raise InputError("--moe-z-loss-coeff must be >= 0")
        if self.z_loss_coeff and not self.ROUTER_LOGITS:
            raise InputError(f"--moe-z-loss-coeff {self.z_loss_coeff}: this router has no logits for a z-loss")

    def balance_loss_on(self) -> bool:
        """Whether the balance loss is on (a balance loss, a positive coefficient, a type not none)."""
        return self.BALANCE_LOSS and self.aux_loss_coeff > 0 and self.load_balancing_type != NONE

    def z_loss_on(self) -> bool:
        """Whether the router z-loss is on."""
        return bool(self.ROUTER_LOGITS and self.z_loss_coeff)

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
