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


def _diversified(flags: list[str], report):
    """``report(session, run)`` of a fresh tiny model right after diversify."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = setup_session(run, tiny_gpt_task())
        session.controller.diversify(session.model, session.optimizer)
        return report(session, run)
    finally:
        initialize.shutdown()


def _local_expert_weights(session) -> dict:
    result = {}
    for layer in moe_layers(session.model):
        for local, global_index in enumerate(layer.local_expert_indices):
            fc1, fc2 = expert_weights(layer.experts, local)
            result[(layer.layer_number, global_index)] = (fc1.detach().clone(), fc2.detach().clone())
    return result


def spawned_expert_weights(flags: list[str]) -> dict:
    """Diversify a fresh tiny model; return {(layer, global expert): (fc1, fc2)} of this rank."""
    return _diversified(flags, lambda session, run: _local_expert_weights(session))


def spawned_experts_and_similarity(flags: list[str]) -> tuple:
    """Diversify a fresh tiny model; (the logged expert similarity per MoE layer, this rank's
    {(layer, global expert): (fc1, fc2) shards})."""
    from megatron_evomoe.training.moe_diagnostics import expert_similarity

    return _diversified(
        flags, lambda session, run: (expert_similarity(session.model, run.model), _local_expert_weights(session))
    )


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

    from megatron_evomoe.training.optimizer_state import optimizer_copy

    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = setup_session(run, tiny_gpt_task())
        session.controller.diversify(session.model, session.optimizer)
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
