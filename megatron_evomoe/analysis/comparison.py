"""The router comparison end to end: plan the runs, run what is missing, write table, JSON and plot.

``tools/compare_routers.py`` is the command line; this module holds the steps so that tests can
drive them with a fake launcher (no training) and check resume and report logic.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from megatron_evomoe.analysis import comparison_report as report
from megatron_evomoe.analysis.comparison_runner import Launcher, RunFailed, RunSpec, execute, run_status
from megatron_evomoe.analysis.router_suite import ModelSize, Variant


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
        output_dir: runs/, results.json, comparison.md and the plot go here.
        variants: rows to train (already filtered to registered routers).
        seeds: one run per variant and seed.
        model: model size preset.
        train_iters, micro_batch_size, global_batch_size, lr, min_lr: the shared budget and schedule.
        eval_interval, eval_iters, log_interval, save_interval: evaluation points (the curves),
            logging, checkpoints for resuming.
        passthrough: further pretrain_gpt_moe.py flags (data, tokenizer, overrides), given last so
            that they win over the presets.
        target: the variant whose final PPL the FLOPs-to-target column uses (Switch), and the
            reference of the paired differences at equal FLOPs.
        skipped: variants not run and why.
        protocol: ``default`` or ``paper`` (``router_suite``), recorded in results.json.
        data_seed: ``--data-seed`` of every run: all seeds train on the same samples and are scored
            on the same validation tokens, so that seeds vary only the model (initialisation,
            dropout, router noise) and the per-seed differences are paired.
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
    eval_interval: int
    eval_iters: int
    log_interval: int
    save_interval: int
    passthrough: List[str] = field(default_factory=list)
    target: str = "switch"
    skipped: Dict[str, str] = field(default_factory=dict)
    protocol: str = "default"
    data_seed: int = 1234

    def shared_flags(self) -> List[str]:
        return [
            *self.model.flags, "--data-seed", str(self.data_seed),
            "--train-iters", str(self.train_iters), "--micro-batch-size", str(self.micro_batch_size),
            "--global-batch-size", str(self.global_batch_size), "--lr", str(self.lr), "--min-lr", str(self.min_lr),
            *common_training_flags(self.train_iters),
            "--eval-interval", str(self.eval_interval), "--eval-iters", str(self.eval_iters),
            "--log-interval", str(self.log_interval),
        ]

    def variant_flags(self, variant: Variant) -> List[str]:
        """The flags that make ``variant`` differ from the shared ones."""
        moe = [] if variant.router is None else list(self.model.moe_flags)
        return moe + variant.flags(self.train_iters)

    def tokens_per_iteration(self) -> int:
        argv = self.shared_flags() + self.passthrough
        return int(last_flag_value(argv, "--global-batch-size")) * int(last_flag_value(argv, "--seq-length"))

    def plan(self) -> List[RunSpec]:
        """One :class:`RunSpec` per (variant, seed), variants in table order."""
        specs = []
        for variant in self.variants:
            for seed in self.seeds:
                flags = self.shared_flags() + self.variant_flags(variant) + ["--seed", str(seed)] + self.passthrough
                run_dir = os.path.join(self.output_dir, "runs", variant.name, f"seed{seed}")
                specs.append(RunSpec(variant.name, seed, run_dir, flags, self.train_iters))
        return specs

    def describe(self) -> dict:
        """The settings as results.json records them."""
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
            # "base" and "sweep" say which variant a row derives from and with which flag values
            # (none yet: every row is its own base), so sweeps add rows, not a new layout.
            "variants": {
                v.name: {"router": v.router, "flags": self.variant_flags(v), "description": v.description,
                         "base": v.name, "sweep": {}}
                for v in self.variants
            },
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
            execute(spec, launcher, settings.save_interval, keep_checkpoints)  # a complete run only reloads its wall time
        except RunFailed as exc:
            echo(f"    failed: {exc}")
            failures.append(str(exc))
    return failures


@dataclass
class ComparisonOutputs:
    """Paths written by :func:`write_outputs` and the console table."""

    results_json: str
    markdown: str
    plot: str
    console: str


def write_outputs(settings: ComparisonSettings, specs: List[RunSpec], plot: bool = True) -> ComparisonOutputs:
    """results.json, comparison.md (table + flags) and compare_routers.png from the complete runs."""
    results = report.collect_results(specs, settings.tokens_per_iteration(), settings.target)
    summary = report.summarize_variants(results, settings.seeds)
    paired = report.paired_differences(results, settings.target)
    paired_summary = report.summarize_paired(paired, settings.seeds)
    shares = report.phase_share_summary(results, settings.seeds)
    order = [v.name for v in settings.variants]
    tables = {
        "main": report.table_rows(summary, order, settings.target),
        "paired": report.paired_table(paired, paired_summary, order, settings.target),
        "phases": report.phase_table(shares, order),
    }
    out = settings.output_dir
    json_path = os.path.join(out, "results.json")
    document = report.results_document(
        results, summary, settings.describe(), settings.skipped, paired, paired_summary, shares
    )
    report.write_json(json_path, document)
    md_path = os.path.join(out, "comparison.md")
    with open(md_path, "w") as handle:
        handle.write(markdown_report(settings, tables))
    plot_path = os.path.join(out, "compare_routers.png")
    if plot and results:
        from megatron_evomoe.analysis.comparison_plot import plot_comparison

        plot_comparison(results, order, plot_path, settings.target)
    console = "\n\n".join(report.console_table(*table) for table in tables.values() if table[1])
    return ComparisonOutputs(json_path, md_path, plot_path, console)


def markdown_report(settings: ComparisonSettings, tables: Dict[str, tuple]) -> str:
    """The tables, then the settings and each variant's flags (so the tables can be reproduced)."""
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
    if tables["phases"][1]:
        lines += [report.markdown_table(*tables["phases"]), "",
                  "Share of each run's training FLOPs spent in each routing phase (mean ± std over seeds).", ""]
    lines += [
        f"Protocol `{settings.protocol}`. Model `{settings.model.name}`, {settings.train_iters} iterations x "
        f"{info['tokens_per_iteration']} tokens = {info['token_budget']:,} training tokens per run; seeds "
        f"{settings.seeds}" + (" (mean ± sample std)" if len(settings.seeds) > 1 else "")
        + f", all on the same data order and validation tokens (--data-seed {settings.data_seed}).",
        f"FLOPs to reach {settings.target} PPL: first crossing of the seed's {settings.target} final validation PPL, "
        f"linearly interpolated between evaluations (every {settings.eval_interval} iterations); "
        f"'vs {settings.target}': divided by {settings.target}'s own FLOPs to reach it (paper Table VI).",
        "",
        "Shared flags: `" + " ".join(info["shared_flags"]) + "`",
        "",
    ]
    for variant in settings.variants:
        flags = " ".join(settings.variant_flags(variant)) or "(no MoE layers)"
        lines.append(f"- **{variant.name}**: {variant.description}. `{flags}`")
    for name, why in settings.skipped.items():
        lines.append(f"- **{name}**: not run ({why})")
    return "\n".join(lines) + "\n"
