"""Per-rank body of the world-4 tests (importable by spawned processes).

Spawning a world and importing megatron-core cost more than a tiny training on a 2-core machine, so
one world of 4 processes (2 fake nodes x 2 ranks) runs, in turn: the dispatcher checks against the
reference and allgather (``dispatch_ranks.checks_2x2``), tiny GPT-MoE trainings with each
dispatcher (megatron's parallel state rebuilt for each), single MoE layers per registered router
across dispatchers, and the MoE-aware recomputation report (``tests/moe/recompute_ranks.py``).
"""

from __future__ import annotations

import json
import os
import tempfile

import torch

from megatron_evomoe import initialize
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.evolution import PhaseController, moe_layers
from megatron_evomoe.moe.router import RoutingState
from megatron_evomoe.moe.routers import available_routers
from megatron_evomoe.moe.schedule import GATE_SPARSIFY
from megatron_evomoe.training.loop import pretrain
from tests.moe.dispatch.dispatch_ranks import checks_2x2
from tests.moe.recompute_ranks import recompute_report
from tests.tiny import tiny_gpt_task, tiny_run

COMMON = ["--train-iters", "2", "--eval-iters", "0", "--moe-ranks-per-node", "2", "--micro-batch-size", "1"]
LAYOUTS = {
    "ep4": ["--expert-model-parallel-size", "4"],
    "tp_ep": ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--expert-model-parallel-size", "2"],
    "pp_ep": ["--pipeline-model-parallel-size", "2", "--expert-model-parallel-size", "2"],
}
# Trainings: the first is the baseline; all use the same micro-batches, so every layout must match it.
RUNS = [
    ("ep4", "allgather", []),
    ("ep4", "alltoall", []),
    ("ep4", "hierarchical", []),
    ("ep4", "hierarchical_2d", []),
    ("ep4", "auto", ["--moe-recompute", "moe_aware"]),
    ("ep4", "hierarchical", ["--recompute-granularity", "full", "--moe-recompute", "moe_aware"]),
    ("tp_ep", "hierarchical", []),
    ("pp_ep", "hierarchical_2d", ["--moe-recompute", "moe_aware"]),
]
RECOMPUTE_FLAGS = [*COMMON, *LAYOUTS["ep4"], "--moe-token-dispatcher-type", "hierarchical"]

# (dispatcher, --moe-recompute) variants compared with allgather in the per-router layer check
LAYER_VARIANTS = [("alltoall", "none"), ("hierarchical", "moe_aware"), ("hierarchical_2d", "none")]


def train_each(flag_sets: list[list[str]]) -> list[dict]:
    """Train with each flag list; per-iteration ``lm_loss`` and ``grad_norm`` (rank 0), in order."""
    reports = []
    for flags in flag_sets:
        log = os.path.join(tempfile.mkdtemp(), "log.jsonl")
        run = tiny_run(*flags, "--log-json", log)
        initialize.initialize(run.layout, run.training.seed)
        pretrain(run, tiny_gpt_task())
        if int(os.environ.get("RANK", "0")) == 0:
            records = [json.loads(line) for line in open(log)]
            reports.append({key: [r[key] for r in records] for key in ("lm_loss", "grad_norm")})
    return reports


def _layer_step(flags: list[str], router: str, seed: int) -> list[torch.Tensor]:
    config = tiny_run(*flags, "--moe-router-type", router).model
    layer = moe_layers([build_gpt_model(config)])[0]
    # DTS: the sparse gate with Gumbel noise (tokens visit 0..E experts); others: their first step
    state = PhaseController(config).routing_state(0)
    layer.set_routing_state(RoutingState(phase=GATE_SPARSIFY, temperature=1.0) if router == "dts" else state)
    layer.train()
    gen = torch.Generator().manual_seed(seed + int(os.environ.get("RANK", "0")))
    hidden = torch.randn(16, 2, layer.config.hidden_size, generator=gen).requires_grad_()
    upstream = torch.randn(16, 2, layer.config.hidden_size, generator=gen)
    token_ids = torch.randint(0, config.vocab_size, (2, 16), generator=gen)  # [b, s], for hash / StableMoE
    torch.manual_seed(seed)
    output = layer(hidden, padding_mask=token_ids)[0]
    output.backward(upstream)
    return [output.detach(), hidden.grad] + [p.grad for p in layer.parameters() if p.grad is not None]


def layers_per_router(flags: list[str]) -> dict:
    """For every registered router: one MoE layer's output and gradients, allgather vs the others."""
    initialize.initialize(tiny_run(*flags).layout, 1234)
    worst = {}
    for router in available_routers():
        reference = _layer_step([*flags, "--moe-token-dispatcher-type", "allgather"], router, seed=5)
        for dispatcher, recompute in LAYER_VARIANTS:
            got = _layer_step(
                [*flags, "--moe-token-dispatcher-type", dispatcher, "--moe-recompute", recompute], router, seed=5
            )
            assert len(got) == len(reference), (router, dispatcher, recompute)
            label = f"{router}/{dispatcher}/{recompute}"
            for a, b in zip(got, reference):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, label=label: f"{label}: {m}")
            worst[label] = max((a - b).abs().max().item() for a, b in zip(got, reference))
    return worst


def world_of_four(flag_sets: list[list[str]], layer_flags: list[str], recompute_flags: list[str]) -> dict:
    """Everything the world-4 tests look at, in one set of processes."""
    report = {"dispatch": checks_2x2()}
    try:
        report["training"] = train_each(flag_sets)
        report["layers"] = layers_per_router(layer_flags)
        report["recompute"] = recompute_report(recompute_flags)
    finally:
        initialize.shutdown()
    return report
