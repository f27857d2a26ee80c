"""One MoE layer (top-1 Switch router, N experts, EP = 1) against a dense FFN of the same active size.

The dense FFN has the FFN size of one expert, so both compute the same expert FLOPs per token; the
MoE layer adds the router (2 h N FLOPs per token), the permutation of tokens to their experts and
back, and N smaller GEMMs instead of one large one. ``ratio = moe_ms / dense_ms`` is what that costs
(1.0 is the limit). Both modules see the same input tensor and output gradient; forward + backward
are timed alternately (MoE, dense, MoE, ...) so that load changes of a shared machine hit both, and
the median over repeats is reported.

Memory: on CUDA the peak allocated bytes above the inputs during forward + backward
(``torch.cuda.max_memory_allocated``); on CPU, where no allocator statistics exist, the bytes
autograd saves for backward (``moe/activation_memory.py``), the activation footprint of the layer.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch

from megatron_evomoe.arguments import build_run_config, parse_args
from megatron_evomoe.device import use_transformer_engine
from megatron_evomoe.models.layer_specs import dense_mlp_spec, moe_mlp_spec
from megatron_evomoe.moe.activation_memory import SavedTensorMeter
from megatron_evomoe.moe.router import RoutingState


@dataclass(frozen=True)
class BenchCase:
    """One configuration: ``tokens`` tokens of width ``hidden`` through ``num_experts`` experts."""

    tokens: int
    num_experts: int
    hidden: int = 256
    ffn: int = 1024
    dtype: str = "fp32"
    grouped_gemm: bool = False


def build_modules(case: BenchCase, device: str):
    """(MoE layer, dense MLP) with megatron's config for ``case`` (process groups must exist)."""
    from megatron.core.transformer.spec_utils import build_module

    flags = [
        "--num-layers", "1", "--hidden-size", str(case.hidden), "--num-attention-heads", str(max(1, case.hidden // 64)),
        "--ffn-hidden-size", str(case.ffn), "--seq-length", str(case.tokens), "--micro-batch-size", "1",
        "--num-experts", str(case.num_experts), "--moe-router-type", "switch", "--moe-layer-freq", "1",
    ]
    if case.dtype == "bf16":
        flags.append("--bf16")
    if case.grouped_gemm:
        flags.append("--moe-grouped-gemm")
    config = build_run_config(parse_args(flags), 128, 1).model
    use_te = use_transformer_engine()
    moe = build_module(moe_mlp_spec(config, use_te), config=config)
    moe.set_layer_number(1)
    moe.set_routing_state(RoutingState())
    dense = build_module(dense_mlp_spec(use_te), config=config)
    dtype = torch.bfloat16 if case.dtype == "bf16" else torch.float32
    return moe.to(device=device, dtype=dtype).train(), dense.to(device=device, dtype=dtype).train()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fwd_bwd(module, x: torch.Tensor, grad: torch.Tensor) -> None:
    """One forward + backward (parameter gradients accumulate; harmless for timing)."""
    out, _ = module(x)
    out.backward(grad)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
"""wall: elapsed time (what a GPU run wants); process: CPU time of this process, which other load on
a shared CPU does not inflate (use with ``--threads 1``: several threads add their spin time)."""


def time_once(module, x, grad, device: str, clock: str = "wall") -> float:
    now = CLOCKS[clock]
    _sync(device)
    start = now()
    fwd_bwd(module, x, grad)
    _sync(device)
    return (now() - start) * 1000.0


def memory_bytes(module, x, grad, device: str) -> int:
    """CUDA: peak allocated above the current allocation during fwd+bwd; CPU: saved activations."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fwd_bwd(module, x, grad)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with SavedTensorMeter(module.parameters()) as meter:
        out, _ = module(x)
    out.backward(grad)
    return meter.saved_bytes


def measure(case: BenchCase, device: str = "cpu", repeats: int = 10, warmup: int = 2, seed: int = 0,
            clock: str = "wall") -> Dict:
    """Time and memory of MoE vs dense on the same tokens; one JSON-able dict."""
    moe, dense = build_modules(case, device)
    dtype = next(moe.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.tokens, 1, case.hidden, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(case.tokens, 1, case.hidden, generator=gen).to(device=device, dtype=dtype)
    for _ in range(warmup):
        fwd_bwd(moe, x, grad)
        fwd_bwd(dense, x, grad)
    moe_times, dense_times = [], []
    for _ in range(repeats):
        moe_times.append(time_once(moe, x, grad, device, clock))
        dense_times.append(time_once(dense, x, grad, device, clock))
    moe_ms, dense_ms = statistics.median(moe_times), statistics.median(dense_times)
    moe_mem, dense_mem = memory_bytes(moe, x, grad, device), memory_bytes(dense, x, grad, device)
    return {
        "tokens": case.tokens,
        "num_experts": case.num_experts,
        "hidden": case.hidden,
        "ffn": case.ffn,
        "dtype": case.dtype,
        "device": device,
        "clock": clock,
        "threads": torch.get_num_threads(),
        "moe_ms": round(moe_ms, 4),
        "dense_ms": round(dense_ms, 4),
        "ratio": round(moe_ms / dense_ms, 4),
        "moe_ms_min": round(min(moe_times), 4),
        "dense_ms_min": round(min(dense_times), 4),
        "memory_kind": "cuda_peak_allocated" if device.startswith("cuda") else "saved_activations",
        "moe_mem_mb": round(moe_mem / 2**20, 3),
        "dense_mem_mb": round(dense_mem / 2**20, 3),
        "mem_ratio": round(moe_mem / dense_mem, 4) if dense_mem else None,
        "repeats": repeats,
    }


def run_cases(cases: List[BenchCase], device: str, repeats: int, warmup: int, clock: str = "wall",
              emit: Optional[Callable[[Dict], None]] = None) -> List[Dict]:
    """Measure every case (emitting each result as soon as it exists)."""
    results = []
    for case in cases:
        result = measure(case, device, repeats, warmup, clock=clock)
        results.append(result)
        if emit is not None:
            emit(result)
    return results


def format_row(r: Dict) -> str:
    return (f"{r['tokens']:>7} {r['num_experts']:>7} {r['moe_ms']:>10.3f} {r['dense_ms']:>10.3f} {r['ratio']:>7.2f}"
            f" {r['moe_mem_mb']:>10.2f} {r['dense_mem_mb']:>10.2f} {r['mem_ratio'] or float('nan'):>7.2f}")


HEADER = f"{'tokens':>7} {'experts':>7} {'moe ms':>10} {'dense ms':>10} {'ratio':>7} {'moe MB':>10} {'dense MB':>10} {'mem x':>7}"
