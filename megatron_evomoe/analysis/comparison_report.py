"""Turning finished comparison runs into the table, ``results.json`` and their numbers.

Per run: final validation PPL, total training FLOPs (only the experts tokens visited, forward +
backward, as logged), training time (steps only) and process wall time, tokens/s, and the FLOPs at
which its validation curve first reached the target router's final PPL *of the same seed* (paper
Table VI), also relative to the target router's own FLOPs to reach it. Across seeds: mean ± sample
std; a run that never reaches the target counts as missing ("not reached", or "k/n seeds").

Two paired views (same seed, same validation tokens): each variant's validation PPL minus the
target's at the largest FLOPs budget both runs reached (``comparison_math.paired_difference``), and
the share of training FLOPs each routing phase took (EvoMoE's stage 1, dense DTS gate, Top-1).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from megatron_evomoe.analysis.comparison_math import (
    PairedDifference, Stat, flops_to_reach, mean_std, paired_difference, ratio,
)
from megatron_evomoe.analysis.comparison_diagnostics import RunDiagnostics, run_diagnostics
from megatron_evomoe.analysis.comparison_runner import RunSpec, RunStatus, read_meta, run_status
from megatron_evomoe.analysis.run_log import RunSummary, read_records, summarize


@dataclass
class RunResult:
    """One finished run's numbers (``flops_to_target`` None: target not reached or no target)."""

    variant: str
    seed: int
    summary: RunSummary
    wall_seconds: float
    target_ppl: Optional[float] = None
    flops_to_target: Optional[float] = None
    relative_flops_to_target: Optional[float] = None
    diagnostics: Optional[RunDiagnostics] = None


def collect_results(
    specs: List[RunSpec], references: Dict[str, Optional[str]]
) -> Dict[str, Dict[int, RunResult]]:
    """``{row: {seed: RunResult}}`` for the complete runs among ``specs`` (same flags as planned).

    ``references[row]`` is the target's row that ``row`` is compared with (itself for the target's
    rows); the target PPL of seed k is that row's seed-k final PPL (absent without one).
    """
    results: Dict[str, Dict[int, RunResult]] = {}
    for spec in specs:
        if run_status(spec) is not RunStatus.COMPLETE:
            continue  # unfinished, or run with other settings: not comparable
        records = read_records(spec.log_path)
        summary = summarize(records, spec.tokens_per_iteration)
        wall = spec.wall_seconds or (read_meta(spec) or {}).get("wall_seconds", [])
        results.setdefault(spec.variant, {})[spec.seed] = RunResult(
            spec.variant, spec.seed, summary, float(sum(wall)), diagnostics=run_diagnostics(records)
        )
    for row, runs in results.items():
        reference = results.get(references.get(row) or "", {})
        for seed, result in runs.items():
            if seed not in reference:
                continue
            ref = reference[seed].summary
            result.target_ppl = ref.final_val_ppl
            result.flops_to_target = flops_to_reach(_curve(result.summary), ref.final_val_ppl)
            result.relative_flops_to_target = ratio(
                result.flops_to_target, flops_to_reach(_curve(ref), ref.final_val_ppl)
            )
    return results


def _curve(summary: RunSummary) -> list:
    return [(p.flops, p.val_ppl) for p in summary.curve]


METRICS = {
    # key: (RunResult -> value)
    "final_val_ppl": lambda r: r.summary.final_val_ppl,
    "total_flops": lambda r: r.summary.total_flops,
    "flops_to_target": lambda r: r.flops_to_target,
    "relative_flops_to_target": lambda r: r.relative_flops_to_target,
    "train_seconds": lambda r: r.summary.train_seconds,
    "wall_seconds": lambda r: r.wall_seconds,
    "tokens_per_sec": lambda r: r.summary.tokens_per_sec,
}


def paired_differences(
    results: Dict[str, Dict[int, RunResult]], references: Dict[str, Optional[str]]
) -> Dict[str, Dict[int, PairedDifference]]:
    """``{row: {seed: PairedDifference}}`` against the row's reference run of the same seed (rows
    without a reference, and the reference rows themselves, have none)."""
    paired = {}
    for row, runs in results.items():
        reference = references.get(row)
        if reference is None or reference == row:
            continue
        ref = results.get(reference, {})
        paired[row] = {
            seed: paired_difference(_curve(run.summary), _curve(ref[seed].summary))
            for seed, run in sorted(runs.items()) if seed in ref
        }
    return paired


def summarize_paired(paired: Dict[str, Dict[int, PairedDifference]], seeds: List[int]) -> Dict[str, Stat]:
    """Mean ± sample std over seeds of each variant's paired difference (a missing seed counts as missing)."""
    return {
        variant: mean_std([by_seed[s].difference if s in by_seed else None for s in seeds])
        for variant, by_seed in paired.items()
    }


def phase_share_summary(results: Dict[str, Dict[int, RunResult]], seeds: List[int]) -> Dict[str, Dict[str, Stat]]:
    """``{variant: {phase: Stat of its FLOPs share}}`` for the variants that ran in several phases."""
    table = {}
    for variant, runs in results.items():
        seen = {p for r in runs.values() for p in r.summary.phase_flops}
        phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))
        if len(phases) < 2:
            continue
        shares = {s: r.summary.phase_shares() for s, r in runs.items()}
        table[variant] = {
            phase: mean_std([shares[s].get(phase, 0.0) if s in shares else None for s in seeds]) for phase in phases
        }
    return table


PHASE_ORDER = ["expert_diversify", "gate_sparsify", "top1", "stage1", "stage2", "sparse"]
"""Phases in training order (EvoMoE, then StableMoE), for the FLOPs-share table."""


def summarize_variants(results: Dict[str, Dict[int, RunResult]], seeds: List[int]) -> Dict[str, Dict[str, Stat]]:
    """``{variant: {metric: Stat over seeds}}``; a seed without a result counts as missing."""
    table = {}
    for variant, runs in results.items():
        table[variant] = {
            key: mean_std([get(runs[s]) if s in runs else None for s in seeds]) for key, get in METRICS.items()
        }
    return table


def flops_unit(values: List[float]) -> tuple[float, str]:
    """A power of 1000 that puts the largest value between 1 and 1000, and its name."""
    largest = max([v for v in values if v and math.isfinite(v)], default=1.0)
    for scale, name in ((1e18, "EFLOP"), (1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if largest >= scale:
            return scale, name
    return 1.0, "FLOP"


def table_rows(
    summary: Dict[str, Dict[str, Stat]], order: List[str], target: str,
    references: Optional[Dict[str, Optional[str]]] = None,
) -> tuple[list, list]:
    """(header, rows of strings) of the comparison table (``references``: each row's target row)."""
    references = references or {}
    scale, unit = flops_unit([summary[v]["total_flops"].mean or 0.0 for v in order if v in summary])
    header = [
        "router", "val PPL", f"train {unit}", f"{unit} to reach {target} PPL", f"vs {target}",
        "train time (s)", "wall (s)", "tokens/s",
    ]
    rows = []
    for variant in order:
        if variant not in summary:
            continue
        s = summary[variant]
        rows.append([
            variant,
            s["final_val_ppl"].format(),
            s["total_flops"].format(scale, 3, missing="-"),
            s["flops_to_target"].format(
                scale, 3, missing="not reached" if references.get(variant, target) in summary else "-"
            ),
            s["relative_flops_to_target"].format(1.0, 2, missing="-"),
            s["train_seconds"].format(1.0, 1, missing="-"),
            s["wall_seconds"].format(1.0, 1, missing="-"),
            s["tokens_per_sec"].format(1.0, 0, missing="-"),
        ])
    return header, rows


def markdown_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def console_table(header: list, rows: list) -> str:
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def phase_table(shares: Dict[str, Dict[str, Stat]], order: List[str]) -> tuple[list, list]:
    """(header, rows): each phased variant's share of training FLOPs per phase, in percent."""
    seen = {p for by_phase in shares.values() for p in by_phase}
    phases = [p for p in PHASE_ORDER if p in seen] + sorted(seen - set(PHASE_ORDER))
    header = ["router", *[f"{p} FLOPs %" for p in phases]]
    rows = []
    for variant in order:
        if variant in shares:
            rows.append([variant, *[shares[variant][p].format(0.01, 1) if p in shares[variant] else "-"
                                    for p in phases]])
    return header, rows


def paired_table(
    paired: Dict[str, Dict[int, PairedDifference]], stats: Dict[str, Stat], order: List[str], reference: str,
    references: Optional[Dict[str, Optional[str]]] = None,
) -> tuple[list, list]:
    """(header, rows): per row the mean ± std over seeds of its val PPL minus its reference's at
    equal FLOPs, and each seed's difference with the budget it was read at. A ``vs`` column names
    the reference row where grid points pair with different ones."""
    references = references or {}
    show_reference = any(ref not in (None, reference) for ref in references.values())
    header = ["router", *(["vs"] if show_reference else []), f"Δ val PPL vs {reference} at equal FLOPs",
              "per seed: Δ @ budget"]
    rows = []
    for variant in order:
        if variant not in paired:
            continue
        scale, unit = flops_unit([p.budget for p in paired[variant].values()])
        per_seed = "; ".join(
            f"seed {seed}: " + ("-" if p.difference is None else f"{p.difference:+.2f}") + f" @ {p.budget / scale:.3g} {unit}"
            for seed, p in paired[variant].items()
        )
        vs = [references.get(variant) or "-"] if show_reference else []
        rows.append([variant, *vs, stats[variant].format(missing="-"), per_seed or "-"])
    return header, rows


def results_document(
    results: Dict[str, Dict[int, RunResult]],
    summary: Dict[str, Dict[str, Stat]],
    settings: dict,
    skipped: Dict[str, str],
    paired: Optional[Dict[str, Dict[int, PairedDifference]]] = None,
    paired_summary: Optional[Dict[str, Stat]] = None,
    phase_shares: Optional[Dict[str, Dict[str, Stat]]] = None,
    references: Optional[Dict[str, Optional[str]]] = None,
    diagnostics_summary: Optional[Dict[str, Dict[str, Stat]]] = None,
) -> dict:
    """What ``results.json`` holds (layout in docs/measurement.md).

    Every per-row table is keyed by row name (the variant, with its grid point when swept, as
    ``settings.variants`` describes it), so sweeps add keys without reshaping the document.
    """
    runs = {}
    for variant, by_seed in results.items():
        runs[variant] = {}
        for seed, r in sorted(by_seed.items()):
            runs[variant][str(seed)] = {
                **{key: get(r) for key, get in METRICS.items()},
                "target_ppl": r.target_ppl,
                "iterations": r.summary.iterations,
                "phase_flops": r.summary.phase_flops,
                "curve": [asdict(p) for p in r.summary.curve],
                "diagnostics": r.diagnostics.as_dict() if r.diagnostics is not None else None,
            }
    paired = paired or {}
    paired_summary = paired_summary or {}
    references = references or {}
    return {
        "schema_version": 2,
        "settings": settings,
        "runs": runs,
        "summary": {v: {k: asdict(stat) for k, stat in stats.items()} for v, stats in summary.items()},
        "phase_flops_share": {
            v: {phase: asdict(stat) for phase, stat in by_phase.items()} for v, by_phase in (phase_shares or {}).items()
        },
        "diagnostics": {
            v: {key: asdict(stat) for key, stat in stats.items()} for v, stats in (diagnostics_summary or {}).items()
        },
        "paired": {
            "reference": settings.get("target"),
            "variants": {
                v: {
                    "reference_row": references.get(v, settings.get("target")),
                    "difference": asdict(paired_summary[v]) if v in paired_summary else None,
                    "per_seed": {
                        str(seed): {**asdict(p), "difference": p.difference} for seed, p in by_seed.items()
                    },
                }
                for v, by_seed in paired.items()
            },
        },
        "skipped": skipped,
    }


def write_json(path: str, document: dict) -> None:
    """Atomic write (a reader never sees half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(document, handle, indent=1, allow_nan=True)
    os.replace(tmp, path)
