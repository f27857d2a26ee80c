"""Reach the optimizer's own copy of a model parameter (fp32 master weight + Adam moments).

EvoMoE's diversify rewrites expert weights in the middle of training; the optimizer must see the same
values, or its next step would overwrite them from stale master weights. megatron-core keeps that
copy in three ways: FP32Optimizer (the parameter itself), Float16OptimizerWithFloat16Params (a
separate fp32 tensor per parameter) and DistributedOptimizer (this data-parallel rank's flat shard of
the fp32 copy). :func:`optimizer_copy` hides the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

import torch

from megatron_evomoe.training.optimizer import inner_optimizers


@dataclass
class OptimizerCopy:
    """The optimizer's view of one model parameter.

    Attributes:
        main: the fp32 master tensor (or the parameter itself for fp32 training); None when the
            distributed optimizer keeps no part of this parameter on this rank.
        state: Adam state (``exp_avg``, ``exp_avg_sq``, ``step``) keyed like torch's optimizer.
        flat_range: ``(start, end)`` of the flattened parameter that ``main`` holds (distributed
            optimizer shard), or None when ``main`` holds the whole parameter.
    """

    main: Optional[torch.Tensor]
    state: Dict[str, torch.Tensor]
    flat_range: Optional[Tuple[int, int]] = None

    def slice_of(self, full: torch.Tensor) -> torch.Tensor:
        """The part of a parameter-shaped tensor that this copy holds, shaped like ``main``."""
        if self.flat_range is None:
            return full.view_as(self.main)
        start, end = self.flat_range
        return full.reshape(-1)[start:end].view_as(self.main)


def optimizer_copy(optimizer, model_param: torch.nn.Parameter) -> Optional[OptimizerCopy]:
    """The master copy and state of ``model_param`` in megatron's (chained) optimizer, or None."""
    for inner in inner_optimizers(optimizer):
        found = _find(inner, model_param)
        if found is not None:
            return found
    return None


def _find(inner, model_param) -> Optional[OptimizerCopy]:
    if hasattr(inner, "model_param_group_index_map"):  # DistributedOptimizer
        if model_param not in inner.model_param_group_index_map:
            # Managed by this optimizer but sharded to other data-parallel ranks: nothing local.
            managed = any(model_param in buffer.param_index_map for buffer in inner.buffers)
            return OptimizerCopy(None, {}) if managed else None
        group_index, group_order = inner.model_param_group_index_map[model_param]
        main = inner.optimizer.param_groups[group_index]["params"][group_order]
        param_range = inner._get_model_param_range_map(model_param)["param"]
        return OptimizerCopy(main, inner.optimizer.state[main], (param_range.start, param_range.end))
    if hasattr(inner, "float16_groups"):  # Float16OptimizerWithFloat16Params
        for model_group, main_group in zip(inner.float16_groups, inner.fp32_from_float16_groups):
            for param, main in zip(model_group, main_group):
                if param is model_param:
                    return OptimizerCopy(main, inner.optimizer.state[main])
        for group in inner.fp32_from_fp32_groups:
            for param in group:
                if param is model_param:
                    return OptimizerCopy(param, inner.optimizer.state[param])
        return None
    for group in inner.optimizer.param_groups:  # FP32Optimizer
        for param in group["params"]:
            if param is model_param:
                return OptimizerCopy(param, inner.optimizer.state[param])
    return None


@torch.no_grad()
def overwrite_parameter(
    optimizer, model_param: torch.nn.Parameter, moments_from: Optional[torch.nn.Parameter] = None,
    moments_mask: Optional[torch.Tensor] = None,
) -> None:
    """After ``model_param`` was rewritten in place, make the optimizer agree with it.

    The master copy takes the new values. The Adam moments are zeroed, or, with ``moments_from``,
    set to that parameter's moments times ``moments_mask`` (EvoMoE's masked copy). The per-parameter
    step is left alone: megatron keeps one Adam step for all parameters (checkpoints store it once).
    """
    target = optimizer_copy(optimizer, model_param)
    if target is None:
        raise ValueError("parameter is not managed by the optimizer")
    if target.main is None:
        return
    target.main.copy_(target.slice_of(model_param.detach().float()))
    source = optimizer_copy(optimizer, moments_from) if moments_from is not None else None
    if source is not None and (source.flat_range is not None or target.flat_range is not None):
        raise ValueError(
            "--evomoe-optimizer-state masked_copy is not supported with --use-distributed-optimizer "
            "(the shared expert's moments live in another rank's shard); use reset"
        )
    for key in ("exp_avg", "exp_avg_sq"):
        if key not in target.state:
            continue
        if source is None:
            target.state[key].zero_()
        else:
            target.state[key].copy_(source.state[key] * moments_mask.to(source.state[key].dtype))


def apply_parameter_updates(optimizer, updates: Iterable) -> None:
    """Make the optimizer agree with parameters a phase transition rewrote (``moe.evolution.
    ParameterUpdate``: the parameter, whose moments it takes and under which mask)."""
    for update in updates:
        overwrite_parameter(optimizer, update.param, update.moments_from, update.mask)
