"""Parameter initialisation that does not depend on the parallel layout.

megatron-core initialises each rank's shard from the rank's RNG stream, so the same seed gives a
different model under another TP/PP/EP layout (a pipeline stage's layers see a different stream;
each EP rank draws its local experts from the same stream). Equivalence tests, resumes under a new
layout and fair router comparisons need *the same model for the same seed whatever the layout*.

After construction, every parameter is re-drawn from its megatron-core ``sharded_state_dict``
entry: the global tensor named by the entry's key (layout-independent, the same key resharding
checkpoints use) is generated from a generator seeded by (seed, key) -- per expert for the expert
axis, so a rank draws only its own experts -- and the rank keeps its slice. Layer norms are
ones/zeros and biases zeros, as in megatron-core; output projections (``linear_proj``,
``linear_fc2``) use the config's ``output_layer_init_method``; other weights ``init_method``. A module
may give a parameter its own rule with :func:`megatron_evomoe.seeding.set_init_rule`.
"""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.dist_checkpointing.mapping import ShardedTensor

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.seeding import InitRule, init_rule, stable_seed


def _default_rule(key: str, config: ModelConfig) -> InitRule:
    name = key.rsplit(".", 1)[-1]
    if "norm" in key and name in ("weight", "layer_norm_weight"):
        return torch.nn.init.ones_
    if name in ("bias", "layer_norm_bias") or name.endswith("_bias"):
        return torch.nn.init.zeros_
    if key.endswith("linear_proj.weight") or key.endswith("linear_fc2.weight"):
        return config.output_layer_init_method
    return config.init_method


def _draw(rule: InitRule, shape, seed: int) -> torch.Tensor:
    full = torch.empty(shape, dtype=torch.float32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rule(full)
    return full


def _local_block(sh_ten: ShardedTensor, full: torch.Tensor, skip: int) -> torch.Tensor:
    index = tuple(
        slice(off, off + size)
        for off, size in zip(sh_ten.global_offset[skip:], sh_ten.local_shape)
    )
    return full[index]


def initialize_parameters(model: torch.nn.Module, config: ModelConfig, seed: Optional[int] = None) -> int:
    """Re-draw every parameter of ``model`` layout-independently; returns how many were drawn."""
    seed = config.seed if seed is None else seed
    drawn = 0
    seen = set()
    for sh_ten in _sharded_tensors(model.sharded_state_dict()):
        param = sh_ten.data
        if not isinstance(param, torch.nn.Parameter) or id(param) in seen:
            continue
        if sh_ten.flattened_range is not None:
            continue
        seen.add(id(param))
        rule = init_rule(param) or _default_rule(sh_ten.key, config)
        prepend = sh_ten.prepend_axis_num
        inner_shape = sh_ten.global_shape[prepend:]
        with torch.no_grad():
            if prepend == 0:
                full = _draw(rule, inner_shape, stable_seed(seed, sh_ten.key))
                param.copy_(_local_block(sh_ten, full, 0).to(param.dtype))
            else:
                # Prepended axes index experts: draw each local expert by its global index.
                expert = sh_ten.global_offset[:prepend]
                full = _draw(rule, inner_shape, stable_seed(seed, sh_ten.key, *expert))
                param.copy_(_local_block(sh_ten, full, prepend).view_as(param).to(param.dtype))
        drawn += 1
    return drawn


def _sharded_tensors(sharded_state_dict):
    if isinstance(sharded_state_dict, ShardedTensor):
        yield sharded_state_dict
    elif isinstance(sharded_state_dict, dict):
        for value in sharded_state_dict.values():
            yield from _sharded_tensors(value)
    elif isinstance(sharded_state_dict, (list, tuple)):
        for value in sharded_state_dict:
            yield from _sharded_tensors(value)
