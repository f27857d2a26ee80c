"""EvoMoE expert-diversify (paper sec. III-B, Fig. 5): spawn N experts from the shared expert.

Each spawned expert is the trained shared expert with part of its weights set to 0 by a random mask
(no rescaling by default: the paper masks, it does not drop out). Granularity:

* ``element`` (default): every weight of fc1 and fc2 is masked independently with probability
  ``mask_ratio``;
* ``neuron``: whole hidden units are masked (a row of fc1 and the matching column of fc2), so each
  expert is a thinner copy of the FFN.

Unrescaled, masking shrinks a spawned expert's output: with element masks each of the two products
keeps a fraction (1 - r) of its terms, about (1 - r)^2 of the output; with neuron masks (1 - r) of
the hidden units reach fc2. ``--evomoe-mask-rescale`` divides the kept weights by (1 - r) so that
the expected pre-activation (element masks: fc1) and the expected output (fc2) equal the shared
expert's: E[m W / (1 - r)] = W for a keep-mask m ~ Bernoulli(1 - r). Neuron masks rescale fc2 only:
a kept unit's pre-activation is the shared expert's exactly, and scaling it would move it along GeLU.

Masks are pure functions of (seed, layer number, global expert index, weight name) and are drawn for
the whole (tensor-parallel unsplit) weight, of which each TP rank keeps its slice: the spawned experts
are identical whatever the EP/TP layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Tuple

import torch

from megatron_evomoe.errors import InputError
from megatron_evomoe.seeding import seeded_generator

if TYPE_CHECKING:
    from megatron_evomoe.moe.routers.dts_config import DTSConfig


def _generator(seed: int, *parts) -> torch.Generator:
    return seeded_generator("diversify", seed, *parts)


def expert_masks(
    ffn_hidden_size: int, hidden_size: int, options: DTSConfig, seed: int, layer_number: int, expert_index: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Keep-masks (True = keep) of one expert's full ``fc1 [f, h]`` and ``fc2 [h, f]`` weights."""
    ratio = options.mask_ratio
    if options.mask_granularity == "element":
        fc1 = torch.rand(ffn_hidden_size, hidden_size, generator=_generator(seed, layer_number, expert_index, "fc1"))
        fc2 = torch.rand(hidden_size, ffn_hidden_size, generator=_generator(seed, layer_number, expert_index, "fc2"))
        return fc1 >= ratio, fc2 >= ratio
    if options.mask_granularity == "neuron":
        units = torch.rand(ffn_hidden_size, generator=_generator(seed, layer_number, expert_index, "units")) >= ratio
        return units[:, None].expand(ffn_hidden_size, hidden_size), units[None, :].expand(hidden_size, ffn_hidden_size)
    raise InputError(f"unknown --evomoe-mask-granularity {options.mask_granularity!r}")


def rescale_factors(options: DTSConfig) -> Tuple[float, float]:
    """Factors applied to the kept (fc1, fc2) weights of a spawned expert (see the module doc)."""
    if not options.mask_rescale:
        return 1.0, 1.0
    keep = 1.0 / (1.0 - options.mask_ratio)
    return (keep, keep) if options.mask_granularity == "element" else (1.0, keep)


def expert_weights(experts: torch.nn.Module, local_index: int) -> Tuple[torch.nn.Parameter, torch.nn.Parameter]:
    """(fc1, fc2) weights of local expert ``local_index`` (SequentialMLP or TE grouped experts)."""
    if hasattr(experts, "local_experts"):
        expert = experts.local_experts[local_index]
        return expert.linear_fc1.weight, expert.linear_fc2.weight
    fc1 = getattr(experts.linear_fc1, f"weight{local_index}", None)
    fc2 = getattr(experts.linear_fc2, f"weight{local_index}", None)
    if fc1 is None or fc2 is None:
        raise ValueError(f"expert-diversify does not know the weight layout of {type(experts).__name__}")
    return fc1, fc2


@dataclass
class SpawnedWeight:
    """One rewritten expert weight, its source in the shared expert, and the (local) keep-mask."""

    weight: torch.nn.Parameter
    source: torch.nn.Parameter
    mask: torch.Tensor


@torch.no_grad()
def spawn_experts(layer, options: DTSConfig, seed: int, tp_rank: int, tp_size: int) -> List[SpawnedWeight]:
    """Overwrite ``layer``'s local experts with masked copies of its shared expert.

    Args:
        layer: an MoELayer with ``shared_expert`` (megatron MLP) and ``experts``.
        options: mask ratio, granularity and rescaling.
        seed: the run's seed.
        tp_rank, tp_size: position in the (expert) tensor-parallel group; the shared expert and the
            experts must be sharded alike (expert TP size == TP size).

    Returns:
        The rewritten weights (for the optimizer update).
    """
    source = layer.shared_expert.linear_fc1.weight, layer.shared_expert.linear_fc2.weight
    return spawn_from(layer, source, options, seed, tp_rank, tp_size)


@torch.no_grad()
def spawn_from(
    layer, source: Tuple[torch.nn.Parameter, torch.nn.Parameter], options: DTSConfig, seed: int,
    tp_rank: int, tp_size: int,
) -> List[SpawnedWeight]:
    """Overwrite ``layer``'s local experts with masked copies of the FFN weights ``source`` (this
    TP rank's ``fc1 [f/tp, h]`` and ``fc2 [h, f/tp]``): the shared expert at diversify, a dense
    model's FFN when upcycling (``training/upcycle.py``). Masks as in :func:`spawn_experts`."""
    shared_fc1, shared_fc2 = source
    ffn_local, hidden = shared_fc1.shape
    rows = slice(tp_rank * ffn_local, (tp_rank + 1) * ffn_local)
    scale1, scale2 = rescale_factors(options)
    spawned = []
    for local_index, global_index in enumerate(layer.local_expert_indices):
        fc1, fc2 = expert_weights(layer.experts, local_index)
        if fc1.shape != shared_fc1.shape or fc2.shape != shared_fc2.shape:
            raise ValueError(
                "expert-diversify needs experts sharded like the shared expert "
                "(--expert-tensor-parallel-size equal to --tensor-model-parallel-size)"
            )
        mask1, mask2 = expert_masks(ffn_local * tp_size, hidden, options, seed, layer.layer_number, global_index)
        mask1, mask2 = mask1[rows].contiguous(), mask2[:, rows].contiguous()
        fc1.copy_(shared_fc1.float() * mask1 * scale1)  # in fp32, rounded once to the weight's dtype
        fc2.copy_(shared_fc2.float() * mask2 * scale2)
        spawned += [SpawnedWeight(fc1, shared_fc1, mask1), SpawnedWeight(fc2, shared_fc2, mask2)]
    return spawned
