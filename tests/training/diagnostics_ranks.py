"""Per-rank bodies of the MoE-diagnostics tests (importable by spawned processes)."""

from __future__ import annotations

import json
import os
import tempfile

from megatron_evomoe import initialize
from megatron_evomoe.moe.diversify import expert_weights
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.training.loop import pretrain, setup_session
from megatron_evomoe.training.moe_diagnostics import expert_similarity
from tests.tiny import tiny_gpt_task, tiny_run


def records_of_run(flags: list[str]) -> list:
    """Train the tiny model with ``flags``; the log records (rank 0; other ranks: [])."""
    log = os.path.join(tempfile.mkdtemp(), "log.jsonl")
    run = tiny_run(*flags, "--log-json", log)
    initialize.initialize(run.layout, run.training.seed)
    try:
        pretrain(run, tiny_gpt_task())
    finally:
        initialize.shutdown()
    if int(os.environ.get("RANK", "0")) != 0:
        return []
    return [json.loads(line) for line in open(log)]


def similarity_after_diversify(flags: list[str]) -> tuple:
    """Diversify a fresh tiny model; (expert_similarity per MoE layer, {(layer, global expert):
    [fc1, fc2] of this rank's shard})."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = setup_session(run, tiny_gpt_task())
        session.controller.diversify(session.model, session.optimizer)
        shards = {}
        for layer in moe_layers(session.model):
            for local, global_index in enumerate(layer.local_expert_indices):
                shards[(layer.layer_number, global_index)] = [w.detach().clone() for w in
                                                              expert_weights(layer.experts, local)]
        return expert_similarity(session.model, run.model), shards
    finally:
        initialize.shutdown()
