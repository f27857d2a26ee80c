"""One MoE layer (EP = 1) against the dense FFN with the same FLOPs, and optionally against
megatron-core's own MoE layer and our per-expert loop, all on the same input in one process.

A token that visits k experts costs k expert FFNs, so the reference is a dense FFN whose FFN size is
k times an expert's (k = 1 for Switch, 2 for GShard, the measured mean for EvoMoE's DTS gate,
which keeps every expert whose weight exceeds the threshold). ``ratio = moe_ms / dense_ms`` is what
routing, permutation and E smaller GEMMs cost on top of the FLOPs (1.0 is the limit).

``--compare megatron-core`` adds megatron-core 0.16.1's ``MoELayer`` (all-gather dispatcher,
``SequentialMLP``, ``TopKRouter`` with k = round(k)) built from the same config
(``analysis/megatron_moe.py``); ``--compare per-expert-loop`` adds our layer with the per-expert
loop instead of the grouped GEMM (how the default of ``--moe-grouped-gemm`` was measured).
Every module sees the same tokens and output gradient; forward + backward are timed in turn
(ours, the others, dense, ours, ...) so that load changes of a shared machine hit all of them,
and the median over repeats is reported.

Memory: on CUDA the peak allocated bytes above the inputs during forward + backward; on CPU, where
no allocator statistics exist, the bytes autograd saves for backward (``moe/activation_memory.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.device import use_transformer_engine
from megatron_evomoe.models.layer_specs import dense_mlp_spec, moe_mlp_spec
from megatron_evomoe.moe.activation_memory import SavedTensorMeter
from megatron_evomoe.moe.router_config import RoutingState
from megatron_evomoe.run_config import build_run_config

ROUTERS = ("switch", "gshard", "dts")
COMPARISONS = ("megatron-core", "per-expert-loop")


@dataclass(frozen=True)
class BenchCase:
    """One configuration: ``tokens`` tokens of width ``hidden`` through ``num_experts`` experts.

    ``grouped_gemm`` None keeps the project's default of ``--moe-grouped-gemm``; ``tau`` is the
    DTS gate's temperature (phase gate_sparsify, Gumbel noise on, as in training).
    """

    tokens: int
    num_experts: int
    hidden: int = 256
    ffn: int = 1024
    dtype: str = "fp32"
    grouped_gemm: Optional[bool] = None
    router: str = "switch"
    tau: float = 1.0
    compare: Tuple[str, ...] = ()


def _config(case: BenchCase, ffn: int, grouped_gemm: Optional[bool]):
    flags = [
        "--num-layers", "1", "--hidden-size", str(case.hidden), "--num-attention-heads", str(max(1, case.hidden // 64)),
        "--ffn-hidden-size", str(ffn), "--moe-ffn-hidden-size", str(case.ffn), "--seq-length", str(case.tokens),
        "--micro-batch-size", "1", "--num-experts", str(case.num_experts), "--moe-router-type", case.router,
        "--moe-layer-freq", "1", "--train-iters", "1", "--lr", "1e-3",  # required; no training here
    ]
    if case.dtype == "bf16":
        flags.append("--bf16")
    if grouped_gemm is not None:
        flags.append("--moe-grouped-gemm" if grouped_gemm else "--no-moe-grouped-gemm")
    return build_run_config(parse_args(flags), 128, 1).model


def _routing_state(config, case: BenchCase) -> RoutingState:
    """The router's first state in which it routes (EvoMoE: the dense-to-sparse gate; its stage 1
    would bypass the router), at temperature ``case.tau`` (read only by a gate with a temperature)."""
    options = config.moe_router
    routes = next(i for i in itertools.count() if not options.shared_expert_stage(options.routing_state(i)))
    return dataclasses.replace(options.routing_state(routes), temperature=case.tau)


def _prepare(module: torch.nn.Module, device: str, dtype: torch.dtype) -> torch.nn.Module:
    return module.to(device=device, dtype=dtype).train()


def build_moe(case: BenchCase, device: str, grouped_gemm: Optional[bool] = None) -> torch.nn.Module:
    """Our MoE layer for ``case`` (process groups must exist)."""
    from megatron.core.transformer.spec_utils import build_module

    config = _config(case, case.ffn, case.grouped_gemm if grouped_gemm is None else grouped_gemm)
    moe = build_module(moe_mlp_spec(config, use_transformer_engine()), config=config)
    moe.set_layer_number(1)
    moe.set_routing_state(_routing_state(config, case))
    return _prepare(moe, device, _dtype(case))


def build_dense(case: BenchCase, device: str, experts_per_token: float) -> torch.nn.Module:
    """megatron's dense MLP with FFN size ``experts_per_token`` x an expert's (the same FLOPs)."""
    from megatron.core.transformer.spec_utils import build_module

    config = _config(case, dense_ffn_size(case.ffn, experts_per_token), case.grouped_gemm)
    return _prepare(build_module(dense_mlp_spec(use_transformer_engine()), config=config), device, _dtype(case))


def build_megatron(case: BenchCase, device: str, topk: int) -> torch.nn.Module:
    """megatron-core's MoELayer (top-``topk``) on the same config."""
    from megatron_evomoe.analysis.megatron_moe import build_megatron_moe_layer

    return _prepare(build_megatron_moe_layer(_config(case, case.ffn, False), topk), device, _dtype(case))


def dense_ffn_size(expert_ffn: int, experts_per_token: float) -> int:
    """FFN size of the dense FFN that does the FLOPs of ``experts_per_token`` experts."""
    return max(1, round(experts_per_token * expert_ffn))


def _dtype(case: BenchCase) -> torch.dtype:
    return torch.bfloat16 if case.dtype == "bf16" else torch.float32


@torch.no_grad()
def experts_per_token(moe, x: torch.Tensor, samples: int = 3) -> float:
    """Mean (token, expert) pairs per token of ``moe``'s router on ``x`` (DTS: noise averaged out)."""
    tokens = x.reshape(-1, x.shape[-1])
    total = 0.0
    for _ in range(samples):
        total += moe.router(tokens, None).routing_map.sum().item()
    return total / (samples * tokens.shape[0])


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def fwd_bwd(module, x: torch.Tensor, grad: torch.Tensor) -> None:
    """One forward + backward (parameter gradients accumulate, as into megatron's main_grad)."""
    out, _ = module(x)
    out.backward(grad)


CLOCKS = {"wall": time.perf_counter, "process": time.process_time}
"""wall: elapsed time (what a GPU run wants); process: CPU time of this process, which other load on
a shared CPU inflates less (use with ``--threads 1``: several threads add their spin time)."""


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


def _modules(case: BenchCase, device: str, x: torch.Tensor) -> Tuple[Dict[str, torch.nn.Module], Dict]:
    """The modules to time, by name, and what the report says about them."""
    moe = build_moe(case, device)
    k = experts_per_token(moe, x)
    modules = {"moe": moe, "dense": build_dense(case, device, k)}
    info = {"experts_per_token": round(k, 4), "dense_ffn": dense_ffn_size(case.ffn, k),
            "grouped_gemm": bool(moe.config.moe_grouped_gemm)}
    if "per-expert-loop" in case.compare:
        modules["loop"] = build_moe(case, device, grouped_gemm=False)
    if "megatron-core" in case.compare:
        topk = max(1, min(case.num_experts, round(k)))
        modules["megatron"] = build_megatron(case, device, topk)
        info["megatron_topk"] = topk
        if dense_ffn_size(case.ffn, topk) != info["dense_ffn"]:
            modules["megatron_dense"] = build_dense(case, device, topk)
    return modules, info


def measure(case: BenchCase, device: str = "cpu", repeats: int = 10, warmup: int = 2, seed: int = 0,
            clock: str = "wall") -> Dict:
    """Time and memory of the MoE layer(s) and the dense FFN on the same tokens; one JSON-able dict."""
    dtype = _dtype(case)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(case.tokens, 1, case.hidden, generator=gen).to(device=device, dtype=dtype).requires_grad_()
    grad = torch.randn(case.tokens, 1, case.hidden, generator=gen).to(device=device, dtype=dtype)
    modules, info = _modules(case, device, x)
    for _ in range(warmup):
        for module in modules.values():
            fwd_bwd(module, x, grad)
    times: Dict[str, List[float]] = {name: [] for name in modules}
    for _ in range(repeats):
        for name, module in modules.items():
            times[name].append(time_once(module, x, grad, device, clock))
    ms = {name: statistics.median(t) for name, t in times.items()}
    mem = {name: memory_bytes(module, x, grad, device) for name, module in modules.items()}
    result = {
        "tokens": case.tokens, "num_experts": case.num_experts, "hidden": case.hidden, "ffn": case.ffn,
        "dtype": case.dtype, "router": case.router, "tau": case.tau,
        **info, "device": device, "clock": clock, "threads": torch.get_num_threads(), "repeats": repeats,
        "memory_kind": "cuda_peak_allocated" if device.startswith("cuda") else "saved_activations",
    }
    for name in modules:
        result[f"{name}_ms"] = round(ms[name], 4)
        result[f"{name}_ms_min"] = round(min(times[name]), 4)
        result[f"{name}_mem_mb"] = round(mem[name] / 2**20, 3)
    result["ratio"] = _ratio(ms["moe"], ms["dense"])
    result["mem_ratio"] = _ratio(mem["moe"], mem["dense"])
    if "loop" in modules:
        result["loop_ratio"] = _ratio(ms["loop"], ms["dense"])
        result["grouped_vs_loop"] = _ratio(ms["moe"], ms["loop"])
    if "megatron" in modules:
        megatron_dense = "megatron_dense" if "megatron_dense" in modules else "dense"
        result["megatron_ratio"] = _ratio(ms["megatron"], ms[megatron_dense])
        result["megatron_mem_ratio"] = _ratio(mem["megatron"], mem[megatron_dense])
        result["moe_vs_megatron"] = _ratio(ms["moe"], ms["megatron"])
    return result


def _ratio(a: float, b: float) -> Optional[float]:
    return round(a / b, 4) if b else None


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


# The printed table: (title, width, format, key) per column; a column shows when its key is there.
_COLUMNS = (
    ("tokens", 7, "d", "tokens"), ("experts", 7, "d", "num_experts"), ("router", 7, "s", "router"),
    ("k", 5, ".2f", "experts_per_token"), ("moe ms", 9, ".2f", "moe_ms"), ("dense ms", 9, ".2f", "dense_ms"),
    ("loop ms", 9, ".2f", "loop_ms"), ("mcore ms", 9, ".2f", "megatron_ms"), ("moe/dense", 9, ".2f", "ratio"),
    ("loop/dense", 10, ".2f", "loop_ratio"), ("moe/loop", 8, ".2f", "grouped_vs_loop"),
    ("mcore/dense", 11, ".2f", "megatron_ratio"), ("moe/mcore", 9, ".2f", "moe_vs_megatron"),
    ("moe MB", 8, ".2f", "moe_mem_mb"), ("dense MB", 8, ".2f", "dense_mem_mb"), ("mem x", 6, ".2f", "mem_ratio"),
    ("mcore MB", 8, ".2f", "megatron_mem_mb"), ("mcore mem x", 11, ".2f", "megatron_mem_ratio"),
)
_COMPARED_KEYS = {"per-expert-loop": ("loop_",), "megatron-core": ("megatron_",)}


def _shown(key: str, compare: Tuple[str, ...]) -> bool:
    needs = [name for name, prefixes in _COMPARED_KEYS.items() if key.startswith(prefixes)]
    needs += ["per-expert-loop"] if key == "grouped_vs_loop" else []
    needs += ["megatron-core"] if key == "moe_vs_megatron" else []
    return all(name in compare for name in needs)


def header(compare: Tuple[str, ...]) -> str:
    """Column titles of :func:`format_row` for the given comparisons."""
    return " ".join(f"{title:>{width}}" for title, width, _, key in _COLUMNS if _shown(key, compare))


def format_row(r: Dict) -> str:
    """One printed line of a result (the columns of :func:`header`)."""
    compare = tuple(name for name, (prefix,) in _COMPARED_KEYS.items() if f"{prefix}ms" in r)
    cells = []
    for _, width, fmt, key in _COLUMNS:
        if _shown(key, compare):
            value = r.get(key)
            cells.append(f"{value:>{width}{fmt}}" if value is not None else f"{'nan':>{width}}")
    return " ".join(cells)


def add_layer_arguments(parser, tokens: List[int]) -> None:
    """The layer-shape flags the benchmark and the profiler share."""
    parser.add_argument("--tokens", nargs="+", type=int, default=tokens)
    parser.add_argument("--experts", nargs="+", type=int, default=[8])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024, help="FFN size of one expert")
    parser.add_argument(
        "--grouped-gemm", action=argparse.BooleanOptionalAction, default=None,
        help="our experts with or without the grouped GEMM (default: the project's default)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")


@contextlib.contextmanager
def layer_world(threads: Optional[int] = None) -> Iterator[None]:
    """A world of one with megatron's process groups for benchmarking single layers (a caller's
    world, e.g. a test's, is used as it is); ``threads`` torch intra-op threads when given."""
    import warnings

    import torch.distributed as dist

    from megatron_evomoe import initialize
    from megatron_evomoe.training.entry import quiet_megatron

    warnings.filterwarnings("ignore")
    quiet_megatron()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    owns_world = not dist.is_initialized()
    if owns_world:
        initialize.initialize(initialize.ParallelLayout(), seed=0)
    try:
        yield
    finally:
        torch.set_num_threads(previous_threads)
        if owns_world:
            initialize.shutdown()
