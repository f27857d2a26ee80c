"""Validation perplexity against iterations and against training FLOPs (the paper's Fig. 6 a/b),
and the MoE diagnostics against iterations.

Per row (a variant, or one grid point of a sweep) the curve is the mean over seeds at each
evaluation (seeds evaluate at the same iterations), with a band of ± one standard deviation when
there are several seeds; FLOPs on the x axis are the mean cumulative training FLOPs at that
evaluation. A dashed line marks the target PPL (Switch's final one), so the FLOPs-to-target column
of the table can be read off panel (b). The diagnostics figure has one panel per diagnostic (mean
over MoE layers and seeds), in the same colours.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

from megatron_evomoe.analysis.comparison_diagnostics import CURVES
from megatron_evomoe.analysis.comparison_report import RunResult, flops_unit


def _colors(count: int):
    """A colour per row: tab10, tab20 beyond ten rows."""
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return lambda index: cmap(index % cmap.N)


def _mean_curve(runs: Dict[int, RunResult]):
    """(iterations, mean FLOPs, mean PPL, std PPL) at the evaluations all seeds share."""
    curves = [{p.iteration: p for p in r.summary.curve} for r in runs.values()]
    common = sorted(set.intersection(*(set(c) for c in curves)))
    iters, flops, mean, std = [], [], [], []
    for it in common:
        ppls = [c[it].val_ppl for c in curves]
        if not all(math.isfinite(p) for p in ppls):
            continue
        m = sum(ppls) / len(ppls)
        s = math.sqrt(sum((p - m) ** 2 for p in ppls) / (len(ppls) - 1)) if len(ppls) > 1 else 0.0
        iters.append(it)
        flops.append(sum(c[it].flops for c in curves) / len(curves))
        mean.append(m)
        std.append(s)
    return iters, flops, mean, std


def plot_comparison(
    results: Dict[str, Dict[int, RunResult]],
    order: List[str],
    path: str,
    target: Optional[str] = "switch",
    title: str = "Validation perplexity per training step and per training FLOP",
) -> str:
    """Write the two-panel PNG to ``path`` and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in order if v in results and results[v]]
    scale, unit = flops_unit([p.flops for v in variants for r in results[v].values() for p in r.summary.curve])
    fig, (ax_it, ax_fl) = plt.subplots(1, 2, figsize=(13, 5), constrained_layout=True)
    colors = _colors(len(variants))
    for index, variant in enumerate(variants):
        iters, flops, mean, std = _mean_curve(results[variant])
        if not iters:
            continue
        style = dict(color=colors(index), marker="o", markersize=3, linewidth=1.6,
                     linestyle="--" if variant == "dense" else "-")
        low = [m - s for m, s in zip(mean, std)]
        high = [m + s for m, s in zip(mean, std)]
        x_flops = [f / scale for f in flops]
        for ax, xs in ((ax_it, iters), (ax_fl, x_flops)):
            ax.plot(xs, mean, label=variant, **style)
            if any(std):
                ax.fill_between(xs, low, high, color=style["color"], alpha=0.15, linewidth=0)
    if target in results and results[target]:
        finals = [r.summary.final_val_ppl for r in results[target].values()]
        level = sum(finals) / len(finals)
        for ax in (ax_it, ax_fl):
            ax.axhline(level, color="grey", linestyle=":", linewidth=1)
        ax_fl.annotate(f"{target} final PPL {level:.1f}", xy=(0.99, level), xycoords=("axes fraction", "data"),
                       ha="right", va="bottom", fontsize=8, color="grey")
    ax_it.set_xlabel("training iteration")
    ax_fl.set_xlabel(f"cumulative training {unit}s (forward + backward, computed experts only)")
    for ax, name in ((ax_it, "(a) per iteration"), (ax_fl, "(b) per training FLOP")):
        ax.set_ylabel("validation perplexity (log scale)")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.grid(True, which="both", alpha=0.3)
    ax_fl.legend(fontsize=8, loc="upper right")
    seeds = max((len(results[v]) for v in variants), default=0)
    fig.suptitle(title + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else ""))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mean_diagnostic(runs: Dict[int, RunResult], key: str):
    """(iterations, mean over seeds) at the iterations every seed logged ``key``."""
    curves = [dict(r.diagnostics.curves.get(key, [])) for r in runs.values() if r.diagnostics is not None]
    if not curves or not all(curves):
        return [], []
    common = sorted(set.intersection(*(set(c) for c in curves)))
    return common, [sum(c[it] for c in curves) / len(curves) for it in common]


def plot_diagnostics(results: Dict[str, Dict[int, RunResult]], order: List[str], path: str) -> str:
    """Write a PNG with one panel per diagnostic of :data:`CURVES` (x: iteration) and return it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in order if v in results and results[v]]
    colors = _colors(len(rows))
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, CURVES.items()):
        for index, row in enumerate(rows):
            iters, values = _mean_diagnostic(results[row], key)
            if iters:
                ax.plot(iters, values, color=colors(index), marker="o", markersize=2, linewidth=1.4, label=row)
        ax.set_xlabel("training iteration")
        ax.set_ylabel(label)
        ax.set_title(label + " (mean over MoE layers)")
        ax.grid(True, alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat[1:]:  # rows without similarity (none logged) still get a legend entry
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, fontsize=7, loc="outside right upper")
    seeds = max((len(results[v]) for v in rows), default=0)
    fig.suptitle("MoE diagnostics per logged iteration" + (f" (mean over {seeds} seeds)" if seeds > 1 else ""))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
