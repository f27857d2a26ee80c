"""Per-rank bodies of the EvoMoE multi-process tests."""

from __future__ import annotations

import json
import os
import tempfile

from megatron_evomoe import initialize
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.diversify import expert_weights
from megatron_evomoe.training.loop import pretrain, setup_session
from tests.tiny import tiny_gpt_task, tiny_run


def spawned_expert_weights(flags: list[str]) -> dict:
    """Diversify a fresh tiny model; return {(layer, global expert): (fc1, fc2)} of this rank."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = setup_session(run, tiny_gpt_task())
        session.controller.diversify(session.model)
        result = {}
        for layer in moe_layers(session.model):
            for local, global_index in enumerate(layer.local_expert_indices):
                fc1, fc2 = expert_weights(layer.experts, local)
                result[(layer.layer_number, global_index)] = (fc1.detach().clone(), fc2.detach().clone())
        return result
    finally:
        initialize.shutdown()


def losses_of_run(flags: list[str], log_path: str) -> None:
    """Run pretrain with ``flags`` appending to ``log_path`` (resume runs share the file)."""
    run = tiny_run(*flags, "--log-json", log_path)
    initialize.initialize(run.layout, run.training.seed)
    try:
        pretrain(run, tiny_gpt_task())
    finally:
        initialize.shutdown()


def read_losses(path: str) -> list[float]:
    return [json.loads(line)["lm_loss"] for line in open(path) if '"lm_loss"' in line]


def new_log() -> str:
    return os.path.join(tempfile.mkdtemp(), "log.jsonl")


def master_copies_follow_spawn_under_distributed_optimizer(flags: list[str]) -> int:
    """After diversify with the distributed optimizer, every local master shard equals its weights."""
    import torch

    from megatron_evomoe.training.optimizer_state import apply_parameter_updates, optimizer_copy

    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = setup_session(run, tiny_gpt_task())
        _, updates = session.controller.diversify(session.model)
        apply_parameter_updates(session.optimizer, updates)
        checked = 0
        for layer in moe_layers(session.model):
            weights = [w for local in range(layer.num_local_experts) for w in expert_weights(layer.experts, local)]
            for weight in weights + [layer.router.weight]:
                copy = optimizer_copy(session.optimizer, weight)
                if copy.main is not None:
                    assert torch.equal(copy.main, copy.slice_of(weight.detach().float()))
                    checked += 1
        return checked
    finally:
        initialize.shutdown()
