"""Per-step routing statistics of all MoE layers, summed over every rank.

Each rank fills a ``[num_moe_layers, E + 4 + num_losses]`` table with the layers it holds (its
pipeline stage) and one all-reduce over the world sums it: tokens add up over data-parallel ranks
and over the sequence shards of tensor-parallel ranks. Losses are then divided by (DP size x
micro-batches) to give the mean per-micro-batch loss, as the training objective sees it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import torch

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.models.layer_specs import moe_layer_pattern
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.stats import SCALARS
from megatron_evomoe.training.collectives import sum_over_world


@dataclass
class StepRouting:
    """Routing statistics of one step (or the sum of several), per MoE layer."""

    tokens_per_expert: List[List[float]] = field(default_factory=list)
    num_tokens: List[float] = field(default_factory=list)
    num_assignments: List[float] = field(default_factory=list)
    num_unrouted: List[float] = field(default_factory=list)
    num_selected: List[float] = field(default_factory=list)
    losses: Dict[str, List[float]] = field(default_factory=dict)

    def experts_per_token(self) -> List[float]:
        """Experts each token was computed by (after capacity)."""
        return [a / t if t else 0.0 for a, t in zip(self.num_assignments, self.num_tokens)]

    def dropped_fraction(self) -> List[float]:
        """Tokens left with no expert (only the residual path) after capacity."""
        return [u / t if t else 0.0 for u, t in zip(self.num_unrouted, self.num_tokens)]

    def dropped_pair_fraction(self) -> List[float]:
        """(token, expert) pairs the gate selected that capacity removed: a token of a dense gate
        can lose most of its experts without being dropped entirely."""
        return [(s - a) / s if s else 0.0 for s, a in zip(self.num_selected, self.num_assignments)]

    def total_aux_loss(self) -> float:
        return float(sum(sum(values) for values in self.losses.values()))

    def loss_entries(self, steps: int, per_layer: bool = False) -> Dict[str, object]:
        """Log entries of the auxiliary losses, per step: ``<name>_loss``, the mean over MoE layers
        (what Megatron-LM logs), and with ``per_layer`` (``--moe-per-layer-logging``) also
        ``<name>_loss_per_layer``, one value per MoE layer (TensorBoard: ``.../layer_<k>``)."""
        entries: Dict[str, object] = {}
        for name, values in self.losses.items():
            per_step = [v / max(steps, 1) for v in values]
            entries[f"{name}_loss"] = sum(per_step) / max(len(per_step), 1)
            if per_layer:
                entries[f"{name}_loss_per_layer"] = per_step
        return entries

    def add(self, other: "StepRouting") -> "StepRouting":
        """Element-wise sum (to aggregate a log interval)."""
        if not self.num_tokens:
            return other
        return StepRouting(
            tokens_per_expert=[[a + b for a, b in zip(x, y)] for x, y in zip(self.tokens_per_expert, other.tokens_per_expert)],
            num_tokens=[a + b for a, b in zip(self.num_tokens, other.num_tokens)],
            num_assignments=[a + b for a, b in zip(self.num_assignments, other.num_assignments)],
            num_unrouted=[a + b for a, b in zip(self.num_unrouted, other.num_unrouted)],
            num_selected=[a + b for a, b in zip(self.num_selected, other.num_selected)],
            losses={k: [a + b for a, b in zip(v, other.losses.get(k, [0.0] * len(v)))] for k, v in self.losses.items()},
        )


def moe_layer_index(config: ModelConfig) -> Dict[int, int]:
    """Global 1-based layer number -> index among MoE layers."""
    pattern = moe_layer_pattern(config)
    index, mapping = 0, {}
    for layer, is_moe in enumerate(pattern):
        if is_moe:
            mapping[layer + 1] = index
            index += 1
    return mapping


def collect_step_routing(
    model_chunks, config: ModelConfig, loss_names: tuple, loss_divisor: float
) -> StepRouting:
    """All-reduce this step's statistics of every MoE layer and reset the layers' accumulators."""
    index = moe_layer_index(config)
    num_layers, num_experts = len(index), config.num_moe_experts or 0
    if num_layers == 0:
        return StepRouting()
    width = num_experts + len(SCALARS) + len(loss_names)
    table = torch.zeros(num_layers, width, dtype=torch.float64)
    for layer in moe_layers(model_chunks):
        row = table[index[layer.layer_number]]
        tokens_per_expert, scalars, losses = layer.stats.snapshot()
        row[:num_experts] = tokens_per_expert
        row[num_experts : num_experts + len(SCALARS)] = scalars
        for k, name in enumerate(loss_names):
            row[num_experts + len(SCALARS) + k] = losses.get(name, 0.0)
        layer.stats.reset()
    table = sum_over_world(table)
    scalars = table[:, num_experts : num_experts + len(SCALARS)]
    losses = table[:, num_experts + len(SCALARS) :] / max(loss_divisor, 1.0)
    return StepRouting(
        tokens_per_expert=table[:, :num_experts].tolist(),
        num_tokens=scalars[:, SCALARS.index("num_tokens")].tolist(),
        num_assignments=scalars[:, SCALARS.index("num_assignments")].tolist(),
        num_unrouted=scalars[:, SCALARS.index("num_unrouted")].tolist(),
        num_selected=scalars[:, SCALARS.index("num_selected")].tolist(),
        losses={name: losses[:, k].tolist() for k, name in enumerate(loss_names)},
    )
