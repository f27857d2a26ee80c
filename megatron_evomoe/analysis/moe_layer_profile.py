"""Where one MoE layer's forward + backward spends its time, operator by operator, beside the dense FFN.

Two timers:

* ``profiler``: ``torch.profiler`` (CPU activity), self time per operator, wall clock;
* ``cpu``: the same per-operator view in CPU time of this process (``time.process_time`` around
  every ATen call, through a ``TorchDispatchMode``). On a CPU shared with other jobs the profiler's
  wall-clock self times are inflated wherever the process was preempted (the same operator varied
  2x between runs here); CPU time is not, so the breakdown holds still. Operators called inside a
  kernel (``_grouped_mm``'s per-group GEMMs) count in their caller; Python outside ATen calls
  (autograd, custom Functions) is not in the table but in the total the caller measures.

Both the MoE layer and the dense FFN are profiled in turn (``profiles`` times) and averaged, so that
load changes hit both.
"""

from __future__ import annotations

import collections
import time
from typing import Dict

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class CpuTimePerOp(TorchDispatchMode):
    """Accumulate ``time.process_time`` per ATen operator (ms) while active."""

    def __init__(self):
        super().__init__()
        self.ms: Dict[str, float] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.process_time()
        out = func(*args, **(kwargs or {}))
        self.ms[f"aten::{func.__name__.split('.')[0]}"] += (time.process_time() - start) * 1000.0
        return out


def _profiler_ms(step) -> Dict[str, float]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1000.0 for e in prof.key_averages()}


def _cpu_ms(step) -> Dict[str, float]:
    with CpuTimePerOp() as timer:
        step()
    return dict(timer.ms)


TIMERS = {"profiler": _profiler_ms, "cpu": _cpu_ms}


def profile_modules(modules: Dict[str, torch.nn.Module], x: torch.Tensor, grad: torch.Tensor,
                    profiles: int = 10, warmup: int = 3, timer: str = "cpu") -> Dict[str, Dict[str, float]]:
    """Mean ms per forward+backward of every operator, per module: ``{name: {op: ms}}``."""

    def step_of(module):
        def step():
            out, _ = module(x)
            out.backward(grad)

        return step

    steps = {name: step_of(module) for name, module in modules.items()}
    for step in steps.values():
        for _ in range(warmup):
            step()
    totals = {name: collections.Counter() for name in modules}
    for _ in range(profiles):
        for name, step in steps.items():
            for op, ms in TIMERS[timer](step).items():
                totals[name][op] += ms / profiles
    return {name: dict(ops) for name, ops in totals.items()}


def markdown_table(result: Dict[str, Dict[str, float]], rows: int = 12) -> str:
    """The top ``rows`` operators of the MoE layer, with the dense FFN's time for the same operator."""
    moe, dense = result["moe"], result["dense"]
    moe_total, dense_total = sum(moe.values()), sum(dense.values())
    lines = ["| operator | MoE ms | share | dense ms |", "|---|---|---|---|"]
    for op in sorted(moe, key=lambda op: -moe[op])[:rows]:
        lines.append(f"| `{op}` | {moe[op]:.2f} | {100 * moe[op] / moe_total:.1f}% | {dense.get(op, 0.0):.2f} |")
    lines.append(f"| all operators | {moe_total:.2f} | 100% | {dense_total:.2f} |")
    return "\n".join(lines)
