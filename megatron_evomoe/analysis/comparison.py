"""The router comparison end to end: plan the runs, run what is missing, write tables, JSON and plots.

``tools/compare_routers.py`` is the command line; this module holds the steps so that tests can
drive them with a fake launcher (no training) and check resume and report logic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from megatron_evomoe.analysis import comparison_report as report
from megatron_evomoe.analysis.comparison_diagnostics import diagnostics_table, summarize_diagnostics
from megatron_evomoe.analysis.comparison_runner import Launcher, RunFailed, RunSpec, execute, run_status
from megatron_evomoe.analysis.router_suite import ModelSize, Variant
from megatron_evomoe.analysis.sweep import (
    Row, Sweep, flag_groups, grid, point_flags, point_train_iters, reference_point, takes, without_flags,
)


def common_training_flags(train_iters: int) -> List[str]:
    """Optimiser and regularisation shared by every variant: the paper's (Adam beta2 0.98, weight
    decay 0.1, dropout 0.1, no clipping, polynomial decay) with a 5% warm-up."""
    return [
        "--lr-decay-style", "polynomial", "--lr-warmup-iters", str(max(1, train_iters // 20)),
        "--adam-beta1", "0.9", "--adam-beta2", "0.98", "--weight-decay", "0.1", "--clip-grad", "0.0",
        "--hidden-dropout", "0.1", "--attention-dropout", "0.1",
    ]


@dataclass
class ComparisonSettings:
    """Everything that defines a comparison (same token budget and seeds for every variant).

    Attributes:
        output_dir: runs/, results.json, comparison.md and the plots go here.
        variants: variants to train (already filtered to registered routers).
        seeds: one run per row and seed.
        model: model size preset.
        train_iters, micro_batch_size, global_batch_size, lr, min_lr: the shared budget and schedule
            (``--train-iters`` may be swept: then each point has its own).
        eval_iters: validation batches per evaluation.
        eval_interval, log_interval, save_interval: evaluation points (the curves), logging,
            checkpoints for resuming; None: derived from each run's iterations (a tenth, half the
            evaluation interval, a quarter).
        passthrough: further pretrain_gpt_moe.py flags (data, tokenizer, overrides), given last so
            that they win over the presets.
        target: the variant whose final PPL the FLOPs-to-target column uses (Switch), and the
            reference of the paired differences at equal FLOPs (at each grid point, its row with
            the same swept values: ``sweep.reference_point``).
        skipped: variants not run and why.
        protocol: ``default`` or ``paper`` (``router_suite``), recorded in results.json.
        data_seed: ``--data-seed`` of every run: all seeds train on the same samples and are scored
            on the same validation tokens, so that seeds vary only the model (initialisation,
            dropout, router noise) and the per-seed differences are paired.
        sweeps: ``--sweep`` grids (``analysis/sweep.py``); each variant gets a row per point of the
            sweeps whose flag it reads.
        diagnostics: give every run ``--log-moe-diagnostics`` (expert similarity, gate entropy and
            margin, routing fluctuation, loss jumps at phase changes) with a routing probe of
            ``probe_tokens`` validation tokens.
    """

    output_dir: str
    variants: List[Variant]
    seeds: List[int]
    model: ModelSize
    train_iters: int
    micro_batch_size: int
    global_batch_size: int
    lr: float
    min_lr: float
    eval_iters: int
    eval_interval: Optional[int] = None
    log_interval: Optional[int] = None
    save_interval: Optional[int] = None
    passthrough: List[str] = field(default_factory=list)
    target: str = "switch"
    skipped: Dict[str, str] = field(default_factory=dict)
    protocol: str = "default"
    data_seed: int = 1234
    sweeps: List[Sweep] = field(default_factory=list)
    diagnostics: bool = True
    probe_tokens: int = 256

    # ------------------------------------------------------------------ iteration-derived settings
    def eval_interval_of(self, train_iters: int) -> int:
        return self.eval_interval or max(1, train_iters // 10)

    def log_interval_of(self, train_iters: int) -> int:
        return self.log_interval or max(1, self.eval_interval_of(train_iters) // 2)

    def save_interval_of(self, train_iters: int) -> int:
        return self.save_interval or max(1, train_iters // 4)

    def shared_flags(self, train_iters: Optional[int] = None) -> List[str]:
        """Flags every run of ``train_iters`` iterations (default: the comparison's) gets first."""
        train_iters = train_iters or self.train_iters
        diagnostics = ["--log-moe-diagnostics", "--log-routing-probe", str(self.probe_tokens)] if self.diagnostics else []
        return [
            *self.model.flags, "--data-seed", str(self.data_seed),
            "--train-iters", str(train_iters), "--micro-batch-size", str(self.micro_batch_size),
            "--global-batch-size", str(self.global_batch_size), "--lr", str(self.lr), "--min-lr", str(self.min_lr),
            *common_training_flags(train_iters),
            "--eval-interval", str(self.eval_interval_of(train_iters)), "--eval-iters", str(self.eval_iters),
            "--log-interval", str(self.log_interval_of(train_iters)), *diagnostics,
        ]

    # ----------------------------------------------------------------------------------- rows
    def rows(self) -> List[Row]:
        """Every (variant, grid point) in table order: variants in protocol order, points in sweep order."""
        return [Row(v, point) for v in self.variants for point in grid(v, self.sweeps)]

    def row_train_iters(self, row: Row) -> int:
        return point_train_iters(row.point, self.train_iters)

    def variant_flags(self, variant: Variant, train_iters: Optional[int] = None) -> List[str]:
        """The flags that make ``variant`` differ from the shared ones."""
        moe = [] if variant.router is None else list(self.model.moe_flags)
        return moe + variant.flags(train_iters or self.train_iters)

    def row_flags(self, row: Row) -> List[str]:
        """The row's own flags: its variant's, then its swept values (which replace the variant's)."""
        train_iters = self.row_train_iters(row)
        add, replaced = point_flags(self.sweeps, row.point, train_iters)
        return without_flags(self.variant_flags(row.variant, train_iters), replaced) + add

    def run_flags(self, row: Row, seed: int) -> List[str]:
        """The full pretrain flags of one run (without the per-run paths)."""
        train_iters = self.row_train_iters(row)
        _, replaced = point_flags(self.sweeps, row.point, train_iters)
        shared = without_flags(self.shared_flags(train_iters), replaced)
        return shared + self.row_flags(row) + ["--seed", str(seed)] + self.passthrough_for(row.variant)

    def passthrough_for(self, variant: Variant) -> List[str]:
        """The passthrough flags ``variant`` reads: the dense variant drops the MoE flags (``--num-experts 8``
        given for the MoE rows would otherwise turn the dense baseline into an MoE), and a router's own
        flags go only to that router's variants."""
        return [token for flag, group in flag_groups(self.passthrough) if takes(variant.router, flag) for token in group]

    def tokens_per_iteration(self, argv: Optional[List[str]] = None) -> int:
        argv = argv if argv is not None else self.shared_flags() + self.passthrough
        return int(last_flag_value(argv, "--global-batch-size")) * int(last_flag_value(argv, "--seq-length"))

    def references(self) -> Dict[str, Optional[str]]:
        """``{row: the target's row it is compared with}`` (None when the target is not run): at the
        same swept values, the sweep's first value for a flag only the target reads."""
        target = next((v for v in self.variants if v.name == self.target), None)
        return {
            row.name: None if target is None else Row(target, reference_point(target, row.point, self.sweeps)).name
            for row in self.rows()
        }

    def plan(self) -> List[RunSpec]:
        """One :class:`RunSpec` per (row, seed), rows in table order."""
        specs = []
        for row in self.rows():
            train_iters = self.row_train_iters(row)
            for seed in self.seeds:
                flags = self.run_flags(row, seed)
                run_dir = os.path.join(self.output_dir, "runs", row.directory(), f"seed{seed}")
                specs.append(RunSpec(row.name, seed, run_dir, flags, train_iters, tokens_per_iteration=
                                     self.tokens_per_iteration(flags)))
        return specs

    def describe(self) -> dict:
        """The settings as results.json records them."""
        variants = {}
        for row in self.rows():
            train_iters = self.row_train_iters(row)
            tokens = self.tokens_per_iteration(self.run_flags(row, self.seeds[0] if self.seeds else 1))
            variants[row.name] = {
                "router": row.variant.router, "flags": self.row_flags(row), "description": row.variant.description,
                "base": row.variant.name, "sweep": row.point.as_dict(),
                "train_iters": train_iters, "token_budget": tokens * train_iters,
            }
        return {
            "protocol": self.protocol,
            "model_size": self.model.name,
            "data_seed": self.data_seed,
            "train_iters": self.train_iters,
            "tokens_per_iteration": self.tokens_per_iteration(),
            "token_budget": self.tokens_per_iteration() * self.train_iters,
            "seeds": self.seeds,
            "target": self.target,
            "shared_flags": self.shared_flags() + self.passthrough,
            "sweeps": [{"flag": s.flag, "values": list(s.values)} for s in self.sweeps],
            # One entry per row: "base" names its variant, "sweep" its swept flag values.
            "variants": variants,
        }


def last_flag_value(argv: List[str], name: str) -> Optional[str]:
    """The value of the last ``name VALUE`` in ``argv`` (argparse keeps the last one)."""
    value = None
    for i, token in enumerate(argv[:-1]):
        if token == name:
            value = argv[i + 1]
    return value


def run_all(settings: ComparisonSettings, launcher: Launcher, keep_checkpoints: bool = False,
            echo: Callable[[str], None] = print) -> List[str]:
    """Bring every run to completion (complete ones are skipped). A failed run does not stop the
    others; returns the failure messages (empty when everything completed)."""
    specs = settings.plan()
    failures = []
    for index, spec in enumerate(specs, 1):
        status = run_status(spec)
        echo(f"[{index}/{len(specs)}] {spec.variant} seed {spec.seed}: {status.value}")
        try:
            # a complete run only reloads its wall time
            execute(spec, launcher, settings.save_interval_of(spec.train_iters), keep_checkpoints)
        except RunFailed as exc:
            echo(f"    failed: {exc}")
            failures.append(str(exc))
    return failures


@dataclass
class ComparisonOutputs:
    """Paths written by :func:`write_outputs` and the console tables."""

    results_json: str
    markdown: str
    plot: str
    console: str
    diagnostics_plot: Optional[str] = None


def write_outputs(settings: ComparisonSettings, specs: List[RunSpec], plot: bool = True) -> ComparisonOutputs:
    """results.json, comparison.md (tables + flags), compare_routers.png and, when the runs logged
    diagnostics, diagnostics.png, from the complete runs."""
    references = settings.references()
    results = report.collect_results(specs, references)
    summary = report.summarize_variants(results, settings.seeds)
    paired = report.paired_differences(results, references)
    paired_summary = report.summarize_paired(paired, settings.seeds)
    shares = report.phase_share_summary(results, settings.seeds)
    diagnostics = summarize_diagnostics(results, settings.seeds)
    order = [row.name for row in settings.rows()]
    tables = {
        "main": report.table_rows(summary, order, settings.target, references),
        "paired": report.paired_table(paired, paired_summary, order, settings.target, references),
        "phases": report.phase_table(shares, order),
        "diagnostics": diagnostics_table(diagnostics, order),
    }
    out = settings.output_dir
    json_path = os.path.join(out, "results.json")
    document = report.results_document(
        results, summary, settings.describe(), settings.skipped, paired, paired_summary, shares, references,
        diagnostics,
    )
    report.write_json(json_path, document)
    md_path = os.path.join(out, "comparison.md")
    with open(md_path, "w") as handle:
        handle.write(markdown_report(settings, tables))
    plot_path = os.path.join(out, "compare_routers.png")
    diagnostics_path = None
    if plot and results:
        from megatron_evomoe.analysis.comparison_plot import plot_comparison, plot_diagnostics

        plot_comparison(results, order, plot_path, settings.target)
        if diagnostics:
            diagnostics_path = plot_diagnostics(results, order, os.path.join(out, "diagnostics.png"))
    console = "\n\n".join(report.console_table(*table) for table in tables.values() if table[1])
    return ComparisonOutputs(json_path, md_path, plot_path, console, diagnostics_path)


def markdown_report(settings: ComparisonSettings, tables: Dict[str, tuple]) -> str:
    """The tables, then the settings and each row's flags (so the tables can be reproduced)."""
    info = settings.describe()
    target = settings.target
    lines = [report.markdown_table(*tables["main"]), ""]
    if tables["paired"][1]:
        lines += [
            report.markdown_table(*tables["paired"]),
            "",
            f"Δ: per seed, the variant's validation PPL minus {target}'s of the same seed, both read (linearly "
            f"interpolated between evaluations) at the largest training-FLOPs budget both runs reached; "
            f"mean ± sample std over seeds (negative: better than {target}).",
            "",
        ]
        if settings.sweeps:
            lines += [
                f"Each grid point is paired with the {target} run of the same seeds and the same values of the "
                f"swept flags {target} reads; for a swept flag only {target} reads, with its first value "
                f"(the `vs` column).",
                "",
            ]
    if tables["phases"][1]:
        lines += [report.markdown_table(*tables["phases"]), "",
                  "Share of each run's training FLOPs spent in each routing phase (mean ± std over seeds).", ""]
    if tables["diagnostics"][1]:
        lines += [
            report.markdown_table(*tables["diagnostics"]),
            "",
            "MoE diagnostics (mean over the MoE layers; mean ± std over seeds; docs/measurement.md says what each "
            "means): expert weight cosine similarity at the first log after the experts are in use and at the "
            "end; gate entropy and top-1/top-2 margin over the routing probe's tokens at the end; the fraction "
            "of probe tokens whose top-1 expert changed between consecutive logs; the loss jump at T_S and T_D "
            "(val: validation loss with the same weights just after minus just before the transition; train: "
            "the first training step after it minus the last one before).",
            "",
        ]
    lines += [
        f"Protocol `{settings.protocol}`. Model `{settings.model.name}`, {settings.train_iters} iterations x "
        f"{info['tokens_per_iteration']} tokens = {info['token_budget']:,} training tokens per run"
        + (" (rows that sweep --train-iters: their own)" if any(s.kind == "train_iters" for s in settings.sweeps)
           else "")
        + f"; seeds {settings.seeds}" + (" (mean ± sample std)" if len(settings.seeds) > 1 else "")
        + f", all on the same data order and validation tokens (--data-seed {settings.data_seed}).",
        f"FLOPs to reach {target} PPL: first crossing of the seed's {target} final validation PPL, "
        f"linearly interpolated between evaluations (every {settings.eval_interval_of(settings.train_iters)} "
        f"iterations); 'vs {target}': divided by {target}'s own FLOPs to reach it (paper Table VI).",
        "",
        "Shared flags: `" + " ".join(info["shared_flags"]) + "`",
        "",
    ]
    if settings.sweeps:
        lines += ["Sweeps: " + "; ".join(f"`{s.flag}` = {', '.join(s.values)}" for s in settings.sweeps), ""]
    for row in settings.rows():
        flags = " ".join(settings.row_flags(row)) or "(no MoE layers)"
        lines.append(f"- **{row.name}**: {row.variant.description}. `{flags}`")
    for name, why in settings.skipped.items():
        lines.append(f"- **{name}**: not run ({why})")
    return "\n".join(lines) + "\n"
