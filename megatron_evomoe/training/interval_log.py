"""What the training loop logs at each log interval: the steps between two log lines accumulate in
an :class:`IntervalLog`, which :func:`log_record` turns into the JSON record (``--log-json``,
TensorBoard) and :func:`console_line` into the human-readable line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Dict, Optional

from megatron_evomoe.training.routing_metrics import StepRouting

if TYPE_CHECKING:  # the loop imports this module
    from megatron_evomoe.training.loop import TrainingSession


class IntervalLog:
    """Accumulates what happens between two log lines."""

    def __init__(self):
        self.metric_keys: set = set()  # every task metric seen (not reset: eval records name them too)
        self.reset(time.time())

    def reset(self, now: float) -> None:
        self.start = now
        self.steps = 0
        self.metric_sums: Dict[str, float] = {}
        self.routing = StepRouting()
        self.tokens = 0
        self.skipped = 0
        self.phase_flops: Dict[str, float] = {}

    def add(self, means: Dict[str, float], routing: StepRouting, tokens: int, applied: bool,
            flops: float = 0.0, phase: Optional[str] = None) -> None:
        self.steps += 1
        if phase is not None:
            self.phase_flops[phase] = self.phase_flops.get(phase, 0.0) + flops
        self.metric_keys.update(means)
        for name, value in means.items():
            self.metric_sums[name] = self.metric_sums.get(name, 0.0) + value
        self.routing = self.routing.add(routing)
        self.tokens += tokens
        self.skipped += 0 if applied else 1


def log_record(
    session: TrainingSession, interval: IntervalLog, grad_norm: Optional[float], now: float
) -> Dict[str, object]:
    """The JSON record of one logged iteration (and what the console line shows)."""
    state = session.state
    elapsed = max(now - interval.start, 1e-9)
    means = {k: v / max(interval.steps, 1) for k, v in interval.metric_sums.items()}
    routing = interval.routing
    steps = max(interval.steps, 1)
    routing_state = session.controller.routing_state(state.iteration - 1)
    record: Dict[str, object] = {
        "iteration": state.iteration,
        "consumed_samples": state.consumed_samples,
        **means,
        "aux_loss": routing.total_aux_loss() / steps,
        "lr": session.optimizer.param_groups[0]["lr"] if session.optimizer.param_groups else 0.0,
        "batch_size": session.run.training.global_batch_size,
        "grad_norm": grad_norm,
        "tokens_per_sec": interval.tokens / elapsed,
        "elapsed_ms_per_iter": 1000.0 * elapsed / steps,
        "flops": state.floating_point_operations,
        "skipped_iters": state.skipped_iters,
        "loss_scale": float(session.optimizer.get_loss_scale()),
    }
    if routing.num_tokens:
        record.update(
            phase=routing_state.phase,
            phase_flops=dict(interval.phase_flops),  # this interval's FLOPs by routing phase
            temperature=routing_state.temperature,
            tokens_per_expert=routing.tokens_per_expert,
            experts_per_token=routing.experts_per_token(),
            dropped_token_fraction=routing.dropped_fraction(),
            dropped_pair_fraction=routing.dropped_pair_fraction(),
        )
        record.update(routing.loss_entries(steps, session.run.training.moe_per_layer_logging))
    return record


def console_line(record: Dict[str, object], train_iters: int, progress: str = "") -> str:
    """One human-readable line per log interval (``progress``: elapsed time and ETA)."""
    parts = [f"iter {record['iteration']:>6}/{train_iters}"]
    for key in sorted(k for k in record if k.endswith(("loss", "accuracy")) and isinstance(record[k], float)):
        parts.append(f"{key} {record[key]:.4f}")
    parts.append(f"lr {record['lr']:.3e}")
    if record.get("grad_norm") is not None:
        parts.append(f"grad norm {record['grad_norm']:.3f}")
    parts.append(f"tok/s {record['tokens_per_sec']:.0f}")
    parts.append(f"{record['elapsed_ms_per_iter']:.0f} ms/it")
    if "phase" in record:
        parts.append(f"phase {record['phase']} tau {record['temperature']:.3f}")
        ept = record["experts_per_token"]
        parts.append("experts/token " + " ".join(f"{v:.2f}" for v in ept))
    if record["skipped_iters"]:
        parts.append(f"skipped {record['skipped_iters']}")
    if progress:
        parts.append(progress)
    return " | ".join(parts)
