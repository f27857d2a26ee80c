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


def dts_split_inputs():
    """A whole sequence of 24 tokens, its gumbel draws and a DTS gate (the same on every rank)."""
    gen = torch.Generator().manual_seed(11)
    hidden = torch.randn(24, 32, generator=gen)
    noise = -torch.log(-torch.log(torch.rand(24, 4, generator=gen).clamp(1e-10, 1 - 1e-7)))
    weight = torch.randn(4, 32, generator=gen)
    return hidden, noise, weight


def dts_losses_under_sequence_parallel() -> dict:
    """TP = 2 with sequence parallelism: this rank routes its half of :func:`dts_split_inputs` in the
    dense DTS phase (tau 1.3, injected noise); returns its balance loss and the counts it used."""
    from megatron_evomoe.moe import balance
    from megatron_evomoe.moe.router import RoutingState
    from megatron_evomoe.moe.routers import dts

    run = tiny_run("--moe-router-type", "dts", *LAYOUTS["tp2_sp"], world_size=2)
    initialize.initialize(run.layout, run.training.seed)
    rank = torch.distributed.get_rank()
    hidden, noise, weight = dts_split_inputs()
    half = slice(rank * 12, (rank + 1) * 12)
    dts.gumbel_noise = lambda shape, device, dtype=torch.float32: noise[half].to(dtype)
    seen = {}
    original = balance.count_weighted_balance_loss

    def recording(probs_sum, counts, num_tokens, coeff, *rest):
        seen["counts"] = counts.tolist()
        return original(probs_sum, counts, num_tokens, coeff, *rest)

    import megatron_evomoe.moe.router as router_module

    router_module.count_weighted_balance_loss = recording
    router = dts.DTSRouter(run.model)
    router.weight.data.copy_(weight)
    router.train()
    router.set_routing_state(RoutingState(iteration=3, phase="gate_sparsify", temperature=1.3))
    decision = router(hidden[half], None)
    initialize.shutdown()
    return {"loss": decision.aux_loss.item(), "counts": [int(c) for c in seen["counts"]]}
