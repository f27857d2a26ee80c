"""Reading a ``--log-json`` metrics file, including one written across restarts.

A run resumed from a checkpoint appends to the same file, so the file may hold records of the
interrupted attempt beyond the checkpoint that the resumed attempt then writes again (or never
reaches). Reading therefore *rewinds*: a record whose iteration is not past the last kept one drops
every kept record from that iteration on, so what remains is the history of the attempt that
continued. A half-written last line (the process was killed mid-write) is ignored.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional


def read_records(path: str) -> List[dict]:
    """The records of ``path`` in iteration order after rewinding restarts (empty if missing)."""
    if not os.path.exists(path):
        return []
    kept: List[dict] = []
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; only the last line can be
            if not isinstance(record, dict) or "iteration" not in record:
                continue
            iteration = record["iteration"]
            while kept and kept[-1]["iteration"] >= iteration:
                kept.pop()
            kept.append(record)
    return kept


def truncate_partial_line(path: str) -> None:
    """Cut a last line without its newline (a killed writer's) so that appending starts a clean line."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as handle:
        data = handle.read()
        if data and not data.endswith(b"\n"):
            handle.truncate(data.rfind(b"\n") + 1)


def as_float(value) -> float:
    """A logged number (non-finite values are written as strings such as ``"nan"``)."""
    if value is None:
        return float("nan")
    return float(value)


@dataclass
class EvalPoint:
    """One evaluation of a run: where it was and what it cost up to then."""

    iteration: int
    flops: float
    val_loss: float
    val_ppl: float


def eval_curve(records: List[dict]) -> List[EvalPoint]:
    """Validation points in iteration order, each with the cumulative training FLOPs at that step.

    An eval-only record (an eval iteration that is not a log iteration) carries no ``flops``; it takes
    those of the nearest earlier training record plus a linear share of the next one's increase.
    """
    train = [(r["iteration"], as_float(r["flops"])) for r in records if "flops" in r]
    points = []
    for record in records:
        if "val_ppl" not in record:
            continue
        flops = as_float(record["flops"]) if "flops" in record else _flops_at(train, record["iteration"])
        points.append(EvalPoint(record["iteration"], flops, as_float(record["val_loss"]), as_float(record["val_ppl"])))
    return points


def _flops_at(train: List[tuple], iteration: int) -> float:
    """Cumulative FLOPs at ``iteration`` interpolated between logged training records (0 at step 0)."""
    before = (0, 0.0)
    for it, flops in train:
        if it == iteration:
            return flops
        if it > iteration:
            span = it - before[0]
            return before[1] + (flops - before[1]) * (iteration - before[0]) / span
        before = (it, flops)
    return before[1]


@dataclass
class RunSummary:
    """What the comparison table needs from one finished run."""

    final_val_ppl: float
    final_val_loss: float
    total_flops: float
    train_seconds: float
    tokens_per_sec: float
    iterations: int
    curve: List[EvalPoint]
    phase_flops: Dict[str, float] = field(default_factory=dict)
    """Training FLOPs spent in each routing phase (EvoMoE: expert_diversify, gate_sparsify, top1)."""

    def phase_shares(self) -> Dict[str, float]:
        """Each phase's fraction of the run's training FLOPs (empty for an unphased log)."""
        total = sum(self.phase_flops.values())
        return {phase: flops / total for phase, flops in self.phase_flops.items()} if total > 0 else {}


def train_seconds(records: List[dict]) -> float:
    """Time spent in training steps: sum of ``elapsed_ms_per_iter`` x steps per logged interval.

    Evaluation, checkpointing and start-up are excluded (the loop restarts its interval clock after
    an evaluation), so the number compares routers, not I/O.
    """
    total, previous = 0.0, 0
    for record in records:
        if "elapsed_ms_per_iter" not in record:
            continue
        steps = record["iteration"] - previous
        total += as_float(record["elapsed_ms_per_iter"]) * steps / 1000.0
        previous = record["iteration"]
    return total


def phase_flops(records: List[dict]) -> Dict[str, float]:
    """Sum of the records' ``phase_flops`` (each the FLOPs of the steps since the previous record)."""
    totals: Dict[str, float] = {}
    for record in records:
        for phase, flops in record.get("phase_flops", {}).items():
            totals[phase] = totals.get(phase, 0.0) + as_float(flops)
    return totals


def summarize(records: List[dict], tokens_per_iteration: int) -> Optional[RunSummary]:
    """Summary of a run's records, or None when it has no evaluation yet."""
    curve = eval_curve(records)
    if not curve:
        return None
    last_train = [r for r in records if "flops" in r]
    total_flops = as_float(last_train[-1]["flops"]) if last_train else float("nan")
    iterations = records[-1]["iteration"]
    seconds = train_seconds(records)
    tokens = tokens_per_iteration * iterations
    return RunSummary(
        final_val_ppl=curve[-1].val_ppl,
        final_val_loss=curve[-1].val_loss,
        total_flops=total_flops,
        train_seconds=seconds,
        tokens_per_sec=tokens / seconds if seconds > 0 else float("nan"),
        iterations=iterations,
        curve=curve,
        phase_flops=phase_flops(records),
    )


def is_complete(records: List[dict], train_iters: int) -> bool:
    """The run logged its last iteration with its final evaluation (the loop always evaluates it)."""
    return bool(records) and records[-1]["iteration"] == train_iters and "val_ppl" in records[-1]


def finite(value: float) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def per_layer(records: List[dict], key: str) -> Dict[int, list]:
    """``{iteration: record[key]}`` for the records that hold ``key`` (per-MoE-layer lists)."""
    return {r["iteration"]: r[key] for r in records if key in r}
