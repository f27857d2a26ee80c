"""The phase controller: the only owner of "which phase are we in" (DESIGN.md).

Before every optimizer step the training loop calls :meth:`PhaseController.before_step`; the
controller asks the router's ``Config`` for the routing state of that step (a pure function of the
iteration, so a resume at any step continues exactly), pushes it to every MoE layer, and performs the
one transition that changes weights: EvoMoE's expert-diversify at T_S. That transition returns what
it rewrote (:class:`ParameterUpdate`); the training loop makes the optimizer agree, so nothing here
knows the optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import torch

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.moe.diversify import spawn_experts
from megatron_evomoe.moe.layer import MoELayer
from megatron_evomoe.moe.router_config import RoutingState


def moe_layers(model_chunks: Iterable[torch.nn.Module]) -> List[MoELayer]:
    """Every MoE layer of this rank's model chunks, in layer order."""
    layers = [m for chunk in model_chunks for m in chunk.modules() if isinstance(m, MoELayer)]
    return sorted(layers, key=lambda layer: layer.layer_number or 0)


@dataclass
class ParameterUpdate:
    """A parameter rewritten in place by a phase transition, for the optimizer's copy of it.

    Attributes:
        param: the model parameter, already holding its new values.
        moments_from: the parameter whose Adam moments it takes (masked by ``mask``); None: zero them.
        mask: keep-mask of ``moments_from``'s moments (same shape as ``param``), or None.
    """

    param: torch.nn.Parameter
    moments_from: Optional[torch.nn.Parameter] = None
    mask: Optional[torch.Tensor] = None


@dataclass
class StepTransition:
    """What :meth:`PhaseController.before_step` did: log lines and the parameters it rewrote."""

    events: List[str] = field(default_factory=list)
    updates: List[ParameterUpdate] = field(default_factory=list)


def routing_schedule(config: ModelConfig) -> dict:
    """The resolved phase boundaries of the configured router (run metadata and start-up log)."""
    return config.moe_router.schedule_meta()


def describe_schedule(config: ModelConfig, train_iters: int) -> Optional[str]:
    """One start-up line with the resolved phase boundaries (None for single-phase routers)."""
    return config.moe_router.describe_schedule(train_iters)


class PhaseController:
    """Routing phase and temperature per iteration (from the router's ``Config``), and diversify."""

    def __init__(self, config: ModelConfig):
        self.config = config
        self.options = config.moe_router
        self.applied_state: Optional[RoutingState] = None
        """The state last pushed to the MoE layers: the one the model's latest step trained with."""
        self.experts_spawned_at: Optional[int] = None
        """The step before which the model's experts were spawned (by diversify, or by upcycling a
        dense checkpoint: ``training/upcycle.py``); None while they were not. Saved in checkpoints,
        so a resume never spawns them twice."""

    def state_dict(self) -> dict:
        """What a checkpoint keeps of the controller (the rest is a function of the iteration)."""
        return {"experts_spawned_at": self.experts_spawned_at}

    def load_state_dict(self, state: Optional[dict]) -> None:
        """Take a checkpoint's controller state (None: a checkpoint that has none).

        Raises InputError when the checkpoint's experts were spawned at another step than the one
        this run's router spawns them at (its phases would not start where the experts did).
        """
        spawned = (state or {}).get("experts_spawned_at")
        if spawned is not None:
            self.options.check_spawned_experts(spawned)
        self.experts_spawned_at = spawned

    def routing_state(self, iteration: int) -> RoutingState:
        """The state every router sees during step ``iteration`` (pure)."""
        return self.options.routing_state(iteration)

    def final_routing_state(self, train_iters: Optional[int] = None) -> RoutingState:
        """The state the model is served with (``RouterConfig.final_state``)."""
        return self.options.final_state(train_iters)

    def serving_state(self, iteration: int, train_iters: int) -> Optional[RoutingState]:
        """The final state where evaluating in it differs from evaluating step ``iteration``'s."""
        return self.options.serving_state(iteration, train_iters)

    def schedule_end(self) -> int:
        """The first iteration from which the routing state no longer changes."""
        return self.options.schedule_end()

    def in_shared_expert_stage(self, iteration: int) -> bool:
        """Whether step ``iteration`` trains only the shared expert (no experts to evaluate yet)."""
        return self.options.shared_expert_stage(self.routing_state(iteration))

    def before_step(self, iteration: int, model_chunks) -> StepTransition:
        """Push the state of step ``iteration`` to all MoE layers; returns what changed.

        At T_S (EvoMoE) the experts are spawned from the shared expert and the gate is initialised
        before the step runs, unless the loaded checkpoint's experts were already spawned there
        (an upcycled checkpoint); the caller applies the returned updates to the optimizer.
        """
        transition = StepTransition()
        if iteration == self.options.diversify_iteration() and self.experts_spawned_at is None:
            message, transition.updates = self.diversify(model_chunks)
            transition.events.append(message)
            self.experts_spawned_at = iteration
        state = self.routing_state(iteration)
        if iteration > 0 and self.routing_state(iteration - 1).phase != state.phase:
            transition.events.append(f"phase {self.routing_state(iteration - 1).phase} -> {state.phase}")
        self.apply_state(model_chunks, state)
        return transition

    def diversify(self, model_chunks) -> tuple[str, List[ParameterUpdate]]:
        """EvoMoE's expert-diversify on every MoE layer of this rank; returns (log line, rewritten
        parameters: each spawned expert weight with its masked source, and the fresh gate)."""
        options = self.options
        masked_copy = options.optimizer_state == "masked_copy"
        updates = []
        for layer in moe_layers(model_chunks):
            tp = layer.pg_collection.tp
            for item in spawn_experts(layer, options, self.config.seed, tp.rank(), tp.size()):
                updates.append(ParameterUpdate(item.weight, item.source if masked_copy else None, item.mask))
            layer.router.reset_gate(self.config.seed)
            updates.append(ParameterUpdate(layer.router.weight))
        message = (
            f"expert-diversify: spawned {self.config.num_moe_experts} experts per MoE layer from the "
            f"shared expert (mask ratio {options.mask_ratio}, {options.mask_granularity} masks"
            + (", kept weights rescaled by 1/(1 - ratio)" if options.mask_rescale else "") + ", "
            f"Adam moments: {options.optimizer_state}); DTS gate initialised"
        )
        return message, updates

    def apply_state(self, model_chunks, state: RoutingState) -> None:
        """Push an explicit routing state to every MoE layer (fine-tuning uses the final one)."""
        for layer in moe_layers(model_chunks):
            layer.set_routing_state(state)
        self.applied_state = state
