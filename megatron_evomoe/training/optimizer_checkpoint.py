"""The optimizer's state in a checkpoint, keyed in model space: it loads under any TP/PP/EP/DP layout.

megatron-core's ChainedOptimizer prefixes each tensor with ``chained_<i>.``, the position of the
inner optimizer, and keeps the param groups of every inner optimizer in the checkpoint's common file.
Both depend on the layout: with EP=1 the experts are in the dense optimizer, with EP>1 in a second
one, and a pipeline stage without MoE layers has no second one. So a checkpoint saved under one
expert-parallel size did not load under another.

Here every tensor keeps only the key of the model parameter it belongs to
(``optimizer.state.exp_avg.<param key>``, ``optimizer.state.fp32_param.<param key>``), shaped like
that parameter. The distributed optimizer uses megatron's ``fully_reshardable`` format, which gives
the same keys and shapes: at save its data-parallel shards are all-gathered (each data-parallel rank
briefly holds its model-parallel part of the full optimizer state), at load each rank reads its
model-parallel part and keeps its own slice. (megatron's ``fully_sharded_model_space`` format would
avoid the gather but needs flattened-range ShardedTensors, which megatron-core 0.16 rejects.)
dist_checkpointing then reshards all of them exactly like the weights. The only other
state is the Adam step, which megatron keeps equal for all parameters, and the fp16 loss scaler.
Param-group hyperparameters are not restored: the LR scheduler sets lr and weight decay on load, and
betas and eps are this run's flags (as when the optimizer was built).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from megatron.core.dist_checkpointing.dict_utils import dict_list_map_outplace, nested_values
from megatron.core.dist_checkpointing.mapping import LocalNonpersistentObject, ShardedBase

from megatron_evomoe.training.optimizer import inner_optimizers

FORMAT = "model_space"
"""Recorded in the checkpoint; checkpoints without it use megatron's layout-bound chained format."""

_SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}


class ModelSpaceOptimizerState:
    """Save or load the state of megatron's (chained) optimizer in model space.

    Args:
        optimizer: megatron's optimizer (ChainedOptimizer or a single one).
        model_sharded_state_dict: the model's ``sharded_state_dict()``; the optimizer's tensors take
            their keys and sharding from it.
        is_loading: build a template to load into (allocates empty Adam state where there is none).
    """

    def __init__(self, optimizer, model_sharded_state_dict: Dict[str, Any], is_loading: bool):
        self.inners = inner_optimizers(optimizer)
        for inner in self.inners:
            allocate_state(inner)
        self.inner_dicts = [
            inner.sharded_state_dict(model_sharded_state_dict, is_loading, metadata=_SHARDING)
            for inner in self.inners
        ]

    def _leaves(self) -> List[ShardedBase]:
        return [leaf for d in self.inner_dicts for leaf in nested_values(d) if isinstance(leaf, ShardedBase)]

    def sharded_state_dict(self) -> Dict[str, Any]:
        """What goes into the checkpoint under ``optimizer``."""
        # Keyed by local position: one parameter key can have several local shards (experts).
        tensors = {str(i): leaf for i, leaf in enumerate(self._leaves())}
        scaler = next((inner.grad_scaler for inner in self.inners if getattr(inner, "grad_scaler", None)), None)
        return {
            "format": FORMAT,
            "tensors": tensors,
            "step": adam_step(self.inners),
            "grad_scaler": scaler.state_dict() if scaler is not None else None,
        }

    def named_tensors(self, loaded: Dict[str, Any]) -> List[Tuple[str, torch.Tensor]]:
        """``(checkpoint key, tensor)`` of the loaded ``optimizer`` entry."""
        return [(leaf.key, loaded["tensors"][str(i)]) for i, leaf in enumerate(self._leaves())]

    def load(self, loaded: Dict[str, Any]) -> None:
        """Put the loaded ``optimizer`` entry into the optimizer."""
        tensors = loaded["tensors"]
        position = iter(range(len(tensors)))

        def fill(leaf):  # the same traversal order as sharded_state_dict()
            if isinstance(leaf, ShardedBase):
                return tensors[str(next(position))]
            if isinstance(leaf, LocalNonpersistentObject):
                return leaf.unwrap()
            return leaf

        for inner, inner_dict in zip(self.inners, self.inner_dicts):
            filled = dict_list_map_outplace(fill, inner_dict)
            _add_step(filled, loaded["step"])  # torch's Adam wants it in each parameter's state
            inner.load_state_dict(filled)
        set_adam_step(self.inners, loaded["step"])
        if loaded.get("grad_scaler") is not None:
            for inner in self.inners:
                if getattr(inner, "grad_scaler", None) is not None:
                    inner.grad_scaler.load_state_dict(loaded["grad_scaler"])


def allocate_state(inner) -> None:
    """Give a fresh optimizer zero Adam state at step 0, as its first step would.

    The distributed optimizer can only describe its state once it has some (without TE/apex it
    reads the step from the per-parameter state).
    """
    torch_optimizer = inner.optimizer
    init_state_fn = getattr(inner, "init_state_fn", None)
    if init_state_fn is None or len(torch_optimizer.state) or not any(g["params"] for g in torch_optimizer.param_groups):
        return
    init_state_fn(torch_optimizer, inner.config)
    set_adam_step([inner], 0)


def _add_step(state_dict: Any, step: int) -> None:
    if isinstance(state_dict, dict):
        if "exp_avg" in state_dict:
            state_dict["step"] = torch.tensor(float(step))
        for value in state_dict.values():
            _add_step(value, step)
    elif isinstance(state_dict, list):
        for value in state_dict:
            _add_step(value, step)


def adam_step(inners: List) -> int:
    """The Adam step count (torch's Adam keeps it per parameter, TE/apex FusedAdam per group)."""
    steps = {0}
    for inner in inners:
        torch_optimizer = inner.optimizer
        for group in torch_optimizer.param_groups:
            if "step" in group and group["params"]:
                steps.add(int(group["step"]))
        for state in torch_optimizer.state.values():
            if "step" in state:
                steps.add(int(state["step"]))
    return max(steps)


def set_adam_step(inners: List, step: int) -> None:
    """Set the Adam step of every parameter (and group, where the optimizer keeps it there)."""
    for inner in inners:
        torch_optimizer = inner.optimizer
        for group in torch_optimizer.param_groups:
            if "step" in group:
                group["step"] = int(step)
            for param in group["params"]:
                state = torch_optimizer.state.get(param)
                if not state:
                    continue
                old = state.get("step")
                dtype = old.dtype if torch.is_tensor(old) else torch.float32
                device = old.device if torch.is_tensor(old) else "cpu"
                state["step"] = torch.tensor(float(step), dtype=dtype, device=device)
