"""Per-rank body of the MoE-aware recomputation tests (importable by spawned processes).

One MoE layer of the tiny GPT (expert parallel over the world, an all-to-all dispatcher) runs
forward + backward three ways: no recomputation, ``--moe-recompute moe_aware``, and megatron's full
recomputation of the layer (``tensor_parallel.checkpoint``). Reported per way: saved activation
bytes, exchange calls of each kind made *during backward*, and the gradients.
"""

from __future__ import annotations

import os

import torch
from megatron.core import tensor_parallel

from megatron_evomoe import initialize
from megatron_evomoe.models.gpt import build_gpt_model
from megatron_evomoe.moe.activation_memory import SavedTensorMeter
from megatron_evomoe.moe.evolution import moe_layers
from megatron_evomoe.moe.router import RoutingState
from tests.tiny import tiny_run

MODES = ("none", "moe_aware", "full", "full_moe_aware")
_FLAGS = {
    "none": [],
    "moe_aware": ["--moe-recompute", "moe_aware"],
    "full": ["--recompute-granularity", "full"],
    "full_moe_aware": ["--recompute-granularity", "full", "--moe-recompute", "moe_aware"],
}


def _layer(mode: str, flags: list[str]):
    model = build_gpt_model(tiny_run(*flags, *_FLAGS[mode]).model)
    layer = moe_layers([model])[0]
    layer.set_routing_state(RoutingState())
    layer.train()
    return layer


def one_layer_step(mode: str, layer, seed: int):
    """Two micro-batches through ``layer`` as a pipeline schedule runs them (forward, forward,
    backward, backward; recordings must be replayed first-in first-out); returns (saved bytes of the
    first micro-batch, exchange calls during the backward passes (plus ``router`` / ``experts``:
    how often those modules ran again in backward), grads)."""
    runs = {"router": 0, "experts": 0}
    for name in runs:
        getattr(layer, name).register_forward_hook(lambda *_, name=name: runs.__setitem__(name, runs[name] + 1))
    rank = int(os.environ.get("RANK", "0"))
    gen = torch.Generator().manual_seed(seed + rank)
    hiddens = [torch.randn(16, 2, layer.config.hidden_size, generator=gen).requires_grad_() for _ in range(2)]
    upstreams = [torch.randn(16, 2, layer.config.hidden_size, generator=gen) for _ in range(2)]
    replay = getattr(layer.dispatcher, "replay", None)
    outputs, saved = [], None
    for micro_batch, hidden in enumerate(hiddens):
        torch.manual_seed(seed + micro_batch)  # the router's noise, if any
        with SavedTensorMeter(layer.parameters()) as meter:
            if mode.startswith("full"):  # what megatron's TransformerBlock does for the whole layer
                outputs.append(tensor_parallel.checkpoint(lambda x: layer(x)[0], False, hidden))
            else:
                outputs.append(layer(hidden)[0])
        if saved is None:
            # Replayed all-to-all results are activation memory too (held outside autograd).
            saved = meter.saved_bytes + (replay.recorded_bytes() if replay is not None else 0)
    log = layer.dispatcher.comm_log
    before, runs_before = dict(log.calls), dict(runs)
    for output, upstream in zip(outputs, upstreams):
        output.backward(upstream)
    during_backward = {kind: (log.calls[kind] - before.get(kind, 0)) // 2 for kind in log.calls}
    during_backward.update({name: (runs[name] - runs_before[name]) // 2 for name in runs})
    grads = [h.grad for h in hiddens] + [p.grad.clone() for p in layer.parameters() if p.grad is not None]
    assert replay is None or len(replay) == 0  # every recording was consumed
    return saved, during_backward, grads


def recompute_report(flags: list[str]) -> dict:
    """Each mode on the same layer weights and input; every rank checks the gradients agree.

    (Re)initialises megatron's parallel state for ``flags``; the caller shuts it down.
    """
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    results = {mode: one_layer_step(mode, _layer(mode, flags), seed=3) for mode in MODES}
    reference = results["none"][2]
    for mode in MODES[1:]:
        grads = results[mode][2]
        assert len(grads) == len(reference)
        for got, want in zip(grads, reference):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    return {mode: {"saved_bytes": saved, "backward_calls": calls} for mode, (saved, calls, _) in results.items()}
