"""The MoE diagnostics of finished comparison runs, from their ``--log-moe-diagnostics`` records.

Per run (``training/moe_diagnostics.py`` says what each number means): the curves of expert
similarity, gate entropy, top-1/top-2 gate margin and routing fluctuation over the logged
iterations, each the mean over the MoE layers; the loss jumps at the routing phase changes; and a
summary of both (the first and last similarity, the last entropy and margin, the mean and last
fluctuation, the validation- and training-loss jump at T_S and T_D). Across seeds: mean ± sample
std per row, as a table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_evomoe.analysis.comparison_math import Stat, mean_std
from megatron_evomoe.analysis.run_log import as_float

CURVES = {
    "expert_similarity": "expert cosine similarity",
    "gate_entropy": "gate entropy (nats)",
    "gate_margin": "top-1 - top-2 gate weight",
    "routing_fluctuation": "routing fluctuation",
}
"""Logged per-layer keys and their axis labels."""

SUMMARY_COLUMNS = {
    "similarity_first": "expert cos sim, first",
    "similarity_last": "expert cos sim, last",
    "entropy_last": "gate entropy, last",
    "margin_last": "top1-top2 margin, last",
    "fluctuation_mean": "fluctuation, mean",
    "fluctuation_last": "fluctuation, last",
    "jump_T_S_eval": "ΔL at T_S (val)",
    "jump_T_S_train": "ΔL at T_S (train)",
    "jump_T_D_eval": "ΔL at T_D (val)",
    "jump_T_D_train": "ΔL at T_D (train)",
}
"""Summary keys in table order, and their column headers."""


def layer_mean(values) -> Optional[float]:
    """Mean over the MoE layers of a per-layer entry (non-finite and missing layers left out)."""
    if not isinstance(values, list):
        return None
    finite = [as_float(v) for v in values if v is not None and math.isfinite(as_float(v))]
    return sum(finite) / len(finite) if finite else None


@dataclass
class RunDiagnostics:
    """One run's diagnostics.

    Attributes:
        curves: ``{key: [(iteration, mean over MoE layers)]}`` for the keys of :data:`CURVES`.
        loss_jumps: ``{"T_S" | "T_D" | phase: the logged event}`` (``eval_loss_jump``, ...).
    """

    curves: Dict[str, List[Tuple[int, float]]] = field(default_factory=dict)
    loss_jumps: Dict[str, dict] = field(default_factory=dict)

    def summary(self) -> Dict[str, Optional[float]]:
        """The numbers of :data:`SUMMARY_COLUMNS` (None where the run logged none)."""

        def point(key: str, index: int) -> Optional[float]:
            curve = self.curves.get(key, [])
            return curve[index][1] if curve else None

        fluctuation = [v for _, v in self.curves.get("routing_fluctuation", [])]
        result = {
            "similarity_first": point("expert_similarity", 0),
            "similarity_last": point("expert_similarity", -1),
            "entropy_last": point("gate_entropy", -1),
            "margin_last": point("gate_margin", -1),
            "fluctuation_mean": sum(fluctuation) / len(fluctuation) if fluctuation else None,
            "fluctuation_last": fluctuation[-1] if fluctuation else None,
        }
        for name in ("T_S", "T_D"):
            event = self.loss_jumps.get(name, {})
            for kind, key in (("eval", "eval_loss_jump"), ("train", "train_loss_jump")):
                value = event.get(key)
                result[f"jump_{name}_{kind}"] = None if value is None else as_float(value)
        return result

    def as_dict(self) -> dict:
        return {
            "summary": self.summary(),
            "curves": {key: [list(p) for p in curve] for key, curve in self.curves.items()},
            "loss_jump": self.loss_jumps,
        }


def run_diagnostics(records: Sequence[dict]) -> RunDiagnostics:
    """The diagnostics in a run's log records (empty for a run logged without them)."""
    diagnostics = RunDiagnostics()
    for record in records:
        for key in CURVES:
            value = layer_mean(record.get(key))
            if value is not None:
                diagnostics.curves.setdefault(key, []).append((record["iteration"], value))
        for name, event in (record.get("loss_jump") or {}).items():
            diagnostics.loss_jumps[name] = event
    return diagnostics


def summarize_diagnostics(results: Dict[str, dict], seeds: List[int]) -> Dict[str, Dict[str, Stat]]:
    """``{row: {summary key: Stat over seeds}}`` for the rows with any diagnostic."""
    table = {}
    for row, runs in results.items():
        summaries = {s: r.diagnostics.summary() for s, r in runs.items() if r.diagnostics is not None}
        stats = {
            key: mean_std([summaries[s][key] if s in summaries else None for s in seeds]) for key in SUMMARY_COLUMNS
        }
        if any(stat.count for stat in stats.values()):
            table[row] = stats
    return table


def diagnostics_table(stats: Dict[str, Dict[str, Stat]], order: List[str]) -> tuple[list, list]:
    """(header, rows): the summary columns that any row has, mean ± std over seeds."""
    columns = [key for key in SUMMARY_COLUMNS if any(by_key[key].count for by_key in stats.values())]
    header = ["router", *(SUMMARY_COLUMNS[key] for key in columns)]
    rows = []
    for row in order:
        if row in stats:
            rows.append([row, *(stats[row][key].format(1.0, 3, missing="-") for key in columns)])
    return header, rows
