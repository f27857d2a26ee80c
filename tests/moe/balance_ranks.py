"""Per-rank body of the data-parallel balance-loss test (importable by spawned processes)."""

from __future__ import annotations

import torch

from megatron_evomoe import initialize
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.moe.routers import dts, router_class
from tests.tiny import VOCAB, tiny_run

NUM_TOKENS, HIDDEN, NUM_MICROBATCHES = 12, 32, 2
DTS_STATE = RoutingState(iteration=3, phase="gate_sparsify", temperature=0.3)  # some g' <= c: uneven counts
ROUTERS = ("switch", "gshard", "dts", "stablemoe")


def rank_inputs(rank: int, microbatch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states ``[T, h]`` and token ids ``[T]`` of one rank's micro-batch."""
    gen = torch.Generator().manual_seed(100 * rank + 10 * microbatch + 3)
    return torch.randn(NUM_TOKENS, HIDDEN, generator=gen), torch.randint(0, VOCAB, (NUM_TOKENS,), generator=gen)


def gate_weight(name: str) -> torch.Tensor:
    """The same ``[E, h]`` gate weight on every rank; N(0, 0.2^2): logits of order 1, so that the
    softmax is not saturated and the balance gradient is not vanishingly small."""
    return 0.2 * torch.randn(4, HIDDEN, generator=torch.Generator().manual_seed(ROUTERS.index(name)))


def _router(name: str, balancing_type: str, *flags: str):
    run = tiny_run("--moe-router-type", name, "--moe-router-load-balancing-type", balancing_type, *flags, world_size=2)
    router = router_class(name)(run.model)
    router.set_layer_number(1)
    router.weight.data.copy_(gate_weight(name))
    if name == "dts":
        router.set_routing_state(DTS_STATE)
    router.train()
    return router


def balance_losses_on_two_ranks() -> dict:
    """DP = 2, two micro-batches per rank. For each router: with ``global_aux_loss``, the balance
    loss and gate-weight gradient of each micro-batch (its forward first run without autograd, as
    recomputation does), and micro-batch 0 again after the per-step reset; with ``aux_loss``, the
    loss of micro-batch 0."""
    dts.gumbel_noise = lambda shape, device, dtype=torch.float32: torch.zeros(shape, dtype=dtype)  # no noise
    run = tiny_run(world_size=2)
    initialize.initialize(run.layout, run.training.seed)
    rank = torch.distributed.get_rank()
    results = {}
    for name in ROUTERS:
        router = _router(name, "global_aux_loss")
        losses, no_grad_losses, grads = [], [], []
        for microbatch in range(NUM_MICROBATCHES):
            hidden, ids = rank_inputs(rank, microbatch)
            with torch.no_grad():
                no_grad_losses.append(router(hidden, ids).logged_losses["balance"].item())
            router.weight.grad = None
            decision = router(hidden, ids)
            decision.aux_loss.backward()  # stablemoe: + distillation, which reaches only the distilled router
            losses.append(decision.logged_losses["balance"].item())
            grads.append(router.weight.grad.clone())
        router.reset_global_aux_loss_tracker()
        after_reset = router(*rank_inputs(rank, 0)).logged_losses["balance"].item()
        per_microbatch = _router(name, "aux_loss")(*rank_inputs(rank, 0)).logged_losses["balance"].item()
        results[name] = {
            "losses": losses, "no_grad_losses": no_grad_losses, "grads": grads,
            "after_reset": after_reset, "aux_loss": per_microbatch,
        }
    results["tp2_sp"] = _sequence_parallel_losses()
    initialize.shutdown()
    return results


SP_SEQUENCES = 2
SP_FLAGS = ("--tensor-model-parallel-size", "2", "--sequence-parallel", "--moe-z-loss-coeff", "1e-2")


def _sequence_parallel_losses() -> dict:
    """TP = 2 with sequence parallelism: this rank routes its half of the micro-batch ``rank_inputs(0,
    0)`` (tokens ``[s, b]`` flattened, b = 2); returns its balance term per type and its z term."""
    run = tiny_run(*SP_FLAGS, world_size=2)
    initialize.initialize(run.layout, run.training.seed)  # the same world, new model-parallel groups
    rank = torch.distributed.get_rank()
    hidden, ids = rank_inputs(0, 0)
    half = slice(rank * NUM_TOKENS // 2, (rank + 1) * NUM_TOKENS // 2)
    results = {}
    for name in ROUTERS:
        for balancing_type in ("aux_loss", "seq_aux_loss", "global_aux_loss"):
            router = _router(name, balancing_type, *SP_FLAGS)
            router.num_sequences = SP_SEQUENCES
            decision = router(hidden[half], ids[half])
            results[name, balancing_type] = decision.logged_losses["balance"].item()
            results[name, "z"] = decision.logged_losses["z"].item()
    return results
