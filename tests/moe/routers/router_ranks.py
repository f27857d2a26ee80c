"""Per-rank bodies of the multi-process router tests (importable by spawned processes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_evomoe import initialize
from megatron_evomoe.moe.routers.base import BaseRouter
from tests.tiny import tiny_run

LAYOUTS = {
    "ep2": ["--expert-model-parallel-size", "2"],
    "tp2_sp": ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
}


def base_assignment_per_layout(num_tokens: int) -> dict:
    """For each layout: this rank's (scores [T, E], training routing map) from one BaseRouter."""
    results = {}
    for name, flags in LAYOUTS.items():
        run = tiny_run("--moe-router-type", "base", *flags, world_size=2)
        initialize.initialize(run.layout, run.training.seed)
        router = BaseRouter(run.model)
        torch.manual_seed(0)  # the same gate on every rank
        router.weight.data.normal_(0.0, 1.0)
        rank = torch.distributed.get_rank()
        hidden = torch.randn(num_tokens, 32, generator=torch.Generator().manual_seed(100 + rank))
        decision = router(hidden, None)
        scores = F.linear(hidden.float(), router.weight.detach().float())
        results[name] = (scores, decision.routing_map, router.assignment_group.rank())
    initialize.shutdown()
    return results
