"""Parameter counts of a model, split the way memory is: by pipeline stage, TP sharding and experts.

The counts come from the model itself (built by the task's own ``build_model`` on the meta device,
see ``training/dry_run.py``), not from a formula, so every model family and router is counted
exactly. Classification, per parameter:

* **expert**: a routed expert's weight (``.experts.`` in its name): split over EP x expert-TP.
* **tp_sharded**: megatron marks it ``tensor_model_parallel`` (attention, dense FFN, EvoMoE's shared
  expert, word embeddings): split over TP.
* **replicated**: everything else (layer norms, routers, position embeddings): on every TP rank.

A decoder layer belongs to stage ``layer // (num_layers / PP)``; embeddings to the first stage;
final norm and heads to the last; with PP > 1 a tied output layer keeps a copy of the word
embeddings on the last stage (megatron's shared embedding).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, List, Tuple

import torch

_LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass
class StageCounts:
    """Parameters of one pipeline stage (whole model, before TP/EP sharding)."""

    replicated: int = 0
    tp_sharded: int = 0
    expert: int = 0

    @property
    def total(self) -> int:
        return self.replicated + self.tp_sharded + self.expert

    def per_rank(self, tp: int, ep: int, etp: int) -> Tuple[float, float]:
        """(dense, expert) parameters one rank of this stage holds."""
        return self.replicated + self.tp_sharded / tp, self.expert / (ep * etp)


@dataclass
class ParamInventory:
    """Counts of a model built with TP = PP = EP = 1, and how they split into pipeline stages.

    Attributes:
        stages: per pipeline stage.
        total: unique parameters of the model.
        expert_total: routed-expert parameters (all layers, all experts).
        shared_expert_total: EvoMoE's stage-1 shared FFNs (dense; unused after T_S).
        num_moe_layers, num_experts: to turn expert totals into one expert's size.
    """

    stages: List[StageCounts] = field(default_factory=list)
    total: int = 0
    expert_total: int = 0
    shared_expert_total: int = 0
    num_moe_layers: int = 0
    num_experts: int = 0

    def active_per_token(self, experts_per_token: float) -> float:
        """Parameters a token's forward touches with ``experts_per_token`` experts per MoE layer
        (EvoMoE's shared expert is not used once experts are spawned)."""
        if not self.num_experts:
            return float(self.total)
        dense = self.total - self.expert_total - self.shared_expert_total
        return dense + self.expert_total * experts_per_token / self.num_experts


def take_inventory(
    named_parameters: Iterable[Tuple[str, torch.nn.Parameter]], num_layers: int, pp: int, num_experts: int = 0
) -> ParamInventory:
    """Classify the parameters of a model built with TP = PP = EP = 1 (see the module docstring)."""
    inventory = ParamInventory(stages=[StageCounts() for _ in range(pp)], num_experts=num_experts)
    layers_per_stage = num_layers // pp
    moe_layers, tied_embedding, has_output_layer = set(), 0, False
    for name, param in named_parameters:
        count = param.numel()
        inventory.total += count
        match = _LAYER.search(name)
        if match:
            stage = min(int(match.group(1)) // layers_per_stage, pp - 1)
        elif "embedding" in name:
            stage = 0
        else:
            stage = pp - 1
        counts = inventory.stages[stage]
        if ".experts." in name:
            counts.expert += count
            inventory.expert_total += count
            moe_layers.add(int(match.group(1)) if match else -1)
        elif getattr(param, "tensor_model_parallel", False):
            counts.tp_sharded += count
        else:
            counts.replicated += count
        if "shared_expert" in name:
            inventory.shared_expert_total += count
        if name.endswith("word_embeddings.weight"):
            tied_embedding = count
        if "output_layer.weight" in name:
            has_output_layer = True
    inventory.num_moe_layers = len(moe_layers)
    if pp > 1 and tied_embedding and not has_output_layer:
        inventory.stages[-1].tp_sharded += tied_embedding  # the last stage's copy (not unique)
    return inventory
