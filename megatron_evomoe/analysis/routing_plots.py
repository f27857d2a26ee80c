"""Routing analytics from a ``--log-json`` file: the paper's Fig. 4a/4b, EvoMoE's phases, Table VII.

* :func:`plot_expert_load`: per MoE layer, a heatmap of each expert's share of the layer's
  (token, expert) assignments per log interval over training (Fig. 4a).
* :func:`plot_token_expert`: the expert chosen for one probe token over training, per layer
  (Fig. 4b); needs records written with ``--log-routing-probe``.
* :func:`plot_phases`: tau and the mean number of experts per token per layer, with EvoMoE's
  phases shaded.
* :func:`top_tokens` / :func:`plot_top_tokens`: the most frequent probe tokens of each expert
  (Table VII), counted over the probe records of the last phase.

Intervals without routed tokens (EvoMoE's shared-expert phase) are blank in the heatmaps; probe
entries of -1 mean "no routed expert" (shared expert, or a DTS token below the threshold everywhere).
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Dict, List, Optional

PHASE_COLORS = {"expert_diversify": "#fde0c5", "gate_sparsify": "#c7e9c0", "top1": "#dadaeb",
                "stage1": "#fde0c5", "stage2": "#dadaeb", "sparse": None}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def routing_records(records: List[dict]) -> List[dict]:
    """Training records that carry routing statistics (log iterations of MoE runs)."""
    return [r for r in records if "tokens_per_expert" in r]


def probe_records(records: List[dict]) -> List[dict]:
    return [r for r in records if "routing_probe" in r]


def phase_spans(records: List[dict]) -> List[tuple]:
    """``(phase, first iteration, last iteration)`` runs; a record covers the interval ending at its
    iteration, so a span starts where the previous record ended."""
    spans, previous_end = [], 0
    for record in records:
        phase = record.get("phase")
        if phase is None:
            continue
        if spans and spans[-1][0] == phase:
            spans[-1][2] = record["iteration"]
        else:
            spans.append([phase, previous_end, record["iteration"]])
        previous_end = record["iteration"]
    return [tuple(s) for s in spans]


def _shade_phases(ax, spans: List[tuple], label: bool = True) -> None:
    seen = set()
    for phase, start, end in spans:
        color = PHASE_COLORS.get(phase)
        if color is None:
            continue
        ax.axvspan(start, end, color=color, alpha=0.6, linewidth=0,
                   label=phase if label and phase not in seen else None)
        seen.add(phase)


def load_shares(record: dict) -> List[List[Optional[float]]]:
    """Per layer, each expert's share of that layer's assignments in the interval (None: no routing)."""
    shares = []
    for counts in record["tokens_per_expert"]:
        total = float(sum(counts))
        shares.append([c / total for c in counts] if total > 0 else [None] * len(counts))
    return shares


def plot_expert_load(records: List[dict], path: str, title: str = "Expert load over training") -> str:
    """Fig. 4a: one heatmap per MoE layer (x: iteration, y: expert, colour: share of tokens)."""
    import numpy as np

    plt = _pyplot()
    rows = routing_records(records)
    if not rows:
        raise ValueError("no record has tokens_per_expert (was it an MoE run with --log-json?)")
    num_layers, num_experts = len(rows[0]["tokens_per_expert"]), len(rows[0]["tokens_per_expert"][0])
    iterations = [r["iteration"] for r in rows]
    edges = [0] + iterations
    fig, axes = plt.subplots(num_layers, 1, figsize=(11, 1.2 + 0.35 * num_experts * num_layers + 0.6),
                             squeeze=False, constrained_layout=True)
    shares = np.array([[[np.nan if v is None else v for v in layer] for layer in load_shares(r)] for r in rows])
    for layer in range(num_layers):
        ax = axes[layer][0]
        grid = np.ma.masked_invalid(shares[:, layer, :].T)  # [experts, records]
        cmap = plt.get_cmap("Blues").with_extremes(bad="#eeeeee")
        mesh = ax.pcolormesh(edges, np.arange(num_experts + 1) - 0.5, grid, cmap=cmap, vmin=0.0,
                             vmax=max(float(np.nanmax(shares)) if np.isfinite(shares).any() else 1.0, 1e-9))
        ax.set_ylabel(f"MoE layer {layer}\nexpert")
        ax.set_yticks(range(num_experts))
        for _, start, end in phase_spans(rows)[1:]:
            ax.axvline(start, color="black", linewidth=0.8, linestyle="--")
        fig.colorbar(mesh, ax=ax, label="share of tokens", pad=0.01)
    axes[-1][0].set_xlabel("training iteration (each column: one log interval; grey: no routed tokens)")
    fig.suptitle(title + " (darker = more tokens; dashed lines: phase changes)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def choose_probe_position(
    records: List[dict],
    token: Optional[str] = None,
    token_id: Optional[int] = None,
    position: Optional[int] = None,
    decode: Optional[Callable[[int], str]] = None,
) -> int:
    """Index into the probe of the token to follow: ``position`` as given; else the first occurrence
    of ``token_id``, or of a token whose decoded text (stripped) is ``token`` (needs ``decode``);
    else the most frequent token of the probe (the paper follows "the")."""
    probes = probe_records(records)
    if not probes:
        raise ValueError("no record has routing_probe: train with --log-routing-probe N")
    ids = probes[0]["routing_probe"]["token_ids"]
    if position is not None:
        if not 0 <= position < len(ids):
            raise ValueError(f"--probe-position {position} outside the probe's {len(ids)} tokens")
        return position
    if token is not None:
        if decode is None:
            raise ValueError("--token needs the tokenizer flags (or use --token-id)")
        matches = [i for i, t in enumerate(ids) if decode(t).strip() == token]
        if not matches:
            raise ValueError(f"token {token!r} does not occur in the probe's {len(ids)} tokens")
        return matches[0]
    if token_id is not None:
        if token_id not in ids:
            raise ValueError(f"token id {token_id} does not occur in the probe's {len(ids)} tokens")
        return ids.index(token_id)
    most_common = Counter(ids).most_common(1)[0][0]
    return ids.index(most_common)


def token_trajectory(records: List[dict], position: int) -> Dict[str, list]:
    """``{"iterations": [...], "experts": [[layer] per record], "num_experts": [...]}`` for one probe token."""
    probes = probe_records(records)
    return {
        "iterations": [r["iteration"] for r in probes],
        "experts": [[layer[position] for layer in r["routing_probe"]["experts"]] for r in probes],
        "num_experts": [[layer[position] for layer in r["routing_probe"]["num_experts"]] for r in probes],
        "phases": [r.get("phase") for r in probes],
    }


def plot_token_expert(records: List[dict], position: int, path: str, label: str) -> str:
    """Fig. 4b: per MoE layer, the expert with the largest weight for probe token ``position``
    (marker size: how many experts it visits; -1 row: none / shared expert)."""
    plt = _pyplot()
    trajectory = token_trajectory(records, position)
    iterations = trajectory["iterations"]
    num_layers = len(trajectory["experts"][0])
    num_experts = len(routing_records(records)[0]["tokens_per_expert"][0]) if routing_records(records) else 1
    fig, axes = plt.subplots(num_layers, 1, figsize=(11, 1.0 + (0.3 * num_experts + 0.8) * num_layers),
                             squeeze=False, sharex=True, constrained_layout=True)
    spans = phase_spans(routing_records(records))
    for layer in range(num_layers):
        ax = axes[layer][0]
        experts = [e[layer] for e in trajectory["experts"]]
        counts = [c[layer] for c in trajectory["num_experts"]]
        _shade_phases(ax, spans, label=layer == 0)
        ax.step(iterations, experts, where="post", color="grey", linewidth=0.6)
        ax.scatter(iterations, experts, s=[12 + 10 * max(c, 0) for c in counts], color="tab:red", zorder=3)
        ax.set_ylim(-1.5, num_experts - 0.5)
        ax.set_yticks(range(-1, num_experts))
        ax.set_yticklabels(["none"] + [str(e) for e in range(num_experts)], fontsize=7)
        ax.set_ylabel(f"MoE layer {layer}\nexpert")
        ax.grid(True, axis="y", alpha=0.3)
    if spans:
        axes[0][0].legend(fontsize=7, loc="upper right", ncol=3)
    axes[-1][0].set_xlabel("training iteration")
    fig.suptitle(f"Expert chosen for the token {label} over training (probe position {position}; "
                 "marker size: experts visited)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_phases(records: List[dict], path: str, title: str = "Temperature and experts per token") -> str:
    """tau (left axis) and mean experts per token per MoE layer (right axis) over training."""
    plt = _pyplot()
    rows = [r for r in routing_records(records) if "experts_per_token" in r]
    if not rows:
        raise ValueError("no record has experts_per_token")
    iterations = [r["iteration"] for r in rows]
    fig, ax = plt.subplots(figsize=(11, 4.5), constrained_layout=True)
    _shade_phases(ax, phase_spans(rows))
    if all("temperature" in r for r in rows):
        ax.plot(iterations, [r["temperature"] for r in rows], color="black", linewidth=2, label="temperature τ")
    ax.set_xlabel("training iteration")
    ax.set_ylabel("temperature τ")
    right = ax.twinx()
    for layer in range(len(rows[0]["experts_per_token"])):
        right.plot(iterations, [r["experts_per_token"][layer] for r in rows], marker=".", linewidth=1,
                   label=f"experts/token, MoE layer {layer}")
    right.set_ylabel("mean experts per token (shared expert counts as 1)")
    right.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()
    more = right.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=8, loc="upper right")
    ax.set_title(title + " across the routing phases")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def top_tokens(records: List[dict], k: int = 5, phase: Optional[str] = "last") -> List[Dict[int, list]]:
    """Per MoE layer, ``{expert: [(token id, count), ...]}`` of the ``k`` most frequent probe tokens.

    Args:
        phase: count the probe records of this phase; ``"last"``: the phase of the last probe
            record (the trained router); None: all records.
    """
    probes = probe_records(records)
    if not probes:
        raise ValueError("no record has routing_probe: train with --log-routing-probe N")
    if phase == "last":
        phase = probes[-1].get("phase")
    if phase is not None:
        probes = [r for r in probes if r.get("phase") == phase]
    num_layers = len(probes[0]["routing_probe"]["experts"])
    result = []
    for layer in range(num_layers):
        counters: Dict[int, Counter] = {}
        for record in probes:
            probe = record["routing_probe"]
            for token, expert in zip(probe["token_ids"], probe["experts"][layer]):
                if expert >= 0:
                    counters.setdefault(expert, Counter())[token] += 1
        result.append({e: counters[e].most_common(k) for e in sorted(counters)})
    return result


def show_token(token_id: int, decode: Optional[Callable[[int], str]]) -> str:
    """A readable cell: the decoded text quoted (spaces and newlines visible) or ``#id``."""
    if decode is None:
        return f"#{token_id}"
    text = decode(token_id)
    return repr(text)


def top_tokens_markdown(table: List[Dict[int, list]], decode: Optional[Callable[[int], str]], k: int) -> str:
    lines = []
    for layer, experts in enumerate(table):
        lines += [f"MoE layer {layer}", "", "| expert | " + " | ".join(f"top {i + 1}" for i in range(k)) + " |",
                  "|---" * (k + 1) + "|"]
        for expert, tokens in experts.items():
            cells = [f"{show_token(t, decode)} ({n})" for t, n in tokens] + [""] * (k - len(tokens))
            lines.append(f"| {expert} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_top_tokens(table: List[Dict[int, list]], path: str, decode: Optional[Callable[[int], str]],
                    k: int = 5, title: str = "Most frequent probe tokens per expert") -> str:
    """Table VII as a PNG: one table per MoE layer, a row per expert, ``token (count)`` cells."""
    plt = _pyplot()
    height = sum(0.3 * (len(experts) + 1) + 0.6 for experts in table) + 0.6
    fig, axes = plt.subplots(len(table), 1, figsize=(min(3 + 2.1 * k, 16), height), squeeze=False)
    for layer, experts in enumerate(table):
        ax = axes[layer][0]
        ax.axis("off")
        cells = [[f"{show_token(t, decode)} ({n})" for t, n in tokens] + [""] * (k - len(tokens))
                 for tokens in experts.values()] or [[""] * k]
        shown = ax.table(cellText=cells, rowLabels=[f"expert {e}" for e in experts] or ["-"],
                         colLabels=[f"top {i + 1}" for i in range(k)], loc="center", cellLoc="left")
        shown.auto_set_font_size(False)
        shown.set_fontsize(8)
        ax.set_title(f"MoE layer {layer}", fontsize=10)
    fig.suptitle(title + " (count over the probe records of the last phase)")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
