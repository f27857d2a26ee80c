"""Compare dense, the baseline routers and EvoMoE (+ its two ablations) per training FLOP.

Every variant trains the same model on the same token budget with the same seeds, as one
``pretrain_gpt_moe.py`` process each; then a table (console + ``comparison.md``) of final validation
PPL, total training FLOPs, FLOPs to reach Switch's final PPL (paper Table VI), time and tokens/s,
``results.json`` and ``compare_routers.png`` (val PPL vs iterations and vs FLOPs, paper Fig. 6)::

    python tools/compare_routers.py --output-dir runs/compare --model-size tiny --train-iters 200 \
        --micro-batch-size 8 --global-batch-size 8 --seeds 1 2 3 \
        --tokenizer-type GPT2BPETokenizer --vocab-file demo_output/tokenizer/vocab.json \
        --merge-file demo_output/tokenizer/merges.txt --data-path demo_output/data/pydoc_text_document \
        --split 949,50,1

Batch arithmetic (this example): 1 process, micro batch 8 x 1 micro-batch = global batch 8
sequences x 64 tokens = 512 tokens per iteration; 200 iterations = 102,400 tokens per run.

Flags this script does not know (data, tokenizer, any pretrain_gpt_moe.py override such as
``--num-experts 8``) go, after the presets, to every run that reads them: MoE flags never to dense,
a router's own flags only to its rows. Run it again to resume: complete runs are
kept, interrupted ones resume from their last checkpoint. ``--routers`` picks a subset,
``--launcher "torchrun --nproc-per-node 8"`` runs each job distributed, ``--report-only`` only
rewrites the outputs from the runs on disk.

``--sweep FLAG=v1,v2,...`` (repeatable) trains a grid: every variant that reads FLAG gets a row per
value (per point of the product of several sweeps), in its own run directory, and each EvoMoE grid
point is paired with the Switch run of the same seeds and swept values::

    python tools/compare_routers.py ... --routers switch evomoe \
        --sweep --num-experts=4,8,16 --sweep --evomoe-mask-ratio=0,0.2,0.5

``--sweep --train-iters=1200,3600`` varies the run length (intervals, warm-up and phases follow it),
``--sweep evomoe-shared-fraction=0.025,0.05,0.1`` / ``dts-anneal-fraction=...`` EvoMoE's phases as
fractions of the run (``megatron_evomoe/analysis/sweep.py``). Every run logs the MoE diagnostics
(``--log-moe-diagnostics`` with a ``--probe-tokens`` routing probe; ``--no-diagnostics`` turns them
off), which the report tabulates and plots in ``diagnostics.png``.

``--protocol paper`` is the EvoMoE paper's setup: EvoMoE's phases at 5% + 5% of the steps, balance
weight 0.1 for Switch, StableMoE and EvoMoE (paper sec. V-A), every baseline at its own paper's
defaults, EvoMoE with and without Algorithm 2's Top-1 noise, seeds 1 2 3. Every protocol trains all
seeds on the same data order and scores them on the same validation tokens (``--data-seed``); the
report adds each variant's paired per-seed PPL difference from ``--target`` at equal FLOPs and the
share of training FLOPs each routing phase took.
"""

import argparse
import os
import shlex
import sys

from megatron_evomoe.analysis.comparison import ComparisonSettings, run_all, write_outputs
from megatron_evomoe.analysis.comparison_runner import subprocess_launcher
from megatron_evomoe.analysis.router_suite import (
    MODEL_SIZES, PAPER_SEEDS, PROTOCOLS, protocol_variants, resolve_variants, split_available,
)
from megatron_evomoe.errors import InputError
from megatron_evomoe.analysis.sweep import check_sweeps, extract_sweeps, parse_sweeps
from megatron_evomoe.help_format import HelpFormatter
from megatron_evomoe.moe.routers import available_routers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNED = ("--seed", "--data-seed", "--train-iters", "--log-json", "--save", "--load", "--save-interval",
         "--moe-router-type")


def parse(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], allow_abbrev=False, formatter_class=HelpFormatter
    )
    parser.add_argument("--output-dir", required=True, help="one directory per run, the table and the plots")
    parser.add_argument(
        "--protocol", choices=PROTOCOLS, default="default",
        help="default: the short-run preset; paper: the EvoMoE paper's phases, balance weights and baselines",
    )
    parser.add_argument(
        "--routers", nargs="+", default=None,
        help="subset of the protocol's variants (default all): "
        + "; ".join(f"{p}: {' '.join(protocol_variants(p))}" for p in PROTOCOLS),
    )
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=None,
        help=f"model seeds (default: 1; {' '.join(map(str, PAPER_SEEDS))} with --protocol paper)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=1234,
        help="--data-seed of every run: one data order and one validation set for all seeds",
    )
    parser.add_argument(
        "--model-size", choices=list(MODEL_SIZES), default="tiny", help="the model preset every run trains"
    )
    parser.add_argument("--train-iters", type=int, default=200, help="--train-iters of every run")
    parser.add_argument("--micro-batch-size", type=int, default=8, help="--micro-batch-size of every run")
    parser.add_argument("--global-batch-size", type=int, default=8, help="--global-batch-size of every run")
    parser.add_argument("--lr", type=float, default=1e-3, help="--lr of every run")
    parser.add_argument("--min-lr", type=float, default=1e-4, help="--min-lr of every run")
    parser.add_argument("--eval-interval", type=int, default=None, help="default: each run's train iters / 10")
    parser.add_argument("--eval-iters", type=int, default=4, help="--eval-iters of every run")
    parser.add_argument("--log-interval", type=int, default=None, help="default: eval interval / 2")
    parser.add_argument("--save-interval", type=int, default=None, help="default: each run's train iters / 4")
    parser.add_argument(
        "--sweep", action="append", default=[], metavar="FLAG=v1,v2,...",
        help="repeatable: a row per value for every variant that reads FLAG (a grid with several); "
        "also --train-iters, evomoe-shared-fraction, dts-anneal-fraction (docs/measurement.md)",
    )
    parser.add_argument("--probe-tokens", type=int, default=256,
                        help="validation tokens of the routing probe behind gate entropy, margin and fluctuation")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="do not give the runs --log-moe-diagnostics and the routing probe")
    parser.add_argument("--target", default="switch", help="whose final PPL the FLOPs-to-target column uses")
    parser.add_argument("--launcher", default="", help="command prefix, e.g. 'torchrun --nproc-per-node 8'")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints")
    parser.add_argument("--report-only", action="store_true", help="no training: outputs from the runs on disk")
    try:
        sweeps, argv = extract_sweeps(sys.argv[1:] if argv is None else argv)
    except InputError as exc:
        parser.error(str(exc))
    args, passthrough = parser.parse_known_args(argv)
    args.sweep = sweeps
    if args.probe_tokens < 1:
        parser.error("--probe-tokens must be >= 1 (--no-diagnostics turns the probe off)")
    if args.routers is None:
        args.routers = list(protocol_variants(args.protocol))
    if args.seeds is None:
        args.seeds = list(PAPER_SEEDS) if args.protocol == "paper" else [1]
    clash = [flag for flag in OWNED if flag in passthrough]
    if clash:
        parser.error(f"{', '.join(clash)} are set by this script per run; use its own flags instead")
    if not any(flag in passthrough for flag in ("--data-path", "--train-data-path")):
        parser.error("give the corpus: --data-path PREFIX (+ tokenizer flags), passed to every run")
    return args, passthrough


def main(argv=None) -> int:
    args, passthrough = parse(argv)
    try:
        variants, skipped = split_available(resolve_variants(args.routers, args.protocol), available_routers())
        sweeps = parse_sweeps(args.sweep)
        check_sweeps(sweeps, passthrough, variants)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = ComparisonSettings(
        output_dir=args.output_dir, variants=variants, seeds=args.seeds, model=MODEL_SIZES[args.model_size],
        train_iters=args.train_iters, micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size, lr=args.lr, min_lr=args.min_lr, eval_iters=args.eval_iters,
        eval_interval=args.eval_interval, log_interval=args.log_interval, save_interval=args.save_interval,
        passthrough=passthrough, target=args.target, skipped=skipped, protocol=args.protocol,
        data_seed=args.data_seed, sweeps=sweeps, diagnostics=not args.no_diagnostics,
        probe_tokens=args.probe_tokens,
    )
    for name, why in skipped.items():
        print(f"skipping {name}: {why}")
    failures = []
    if not args.report_only:
        launcher = subprocess_launcher(os.path.join(REPO, "pretrain_gpt_moe.py"), shlex.split(args.launcher))
        failures = run_all(settings, launcher, args.keep_checkpoints)
    outputs = write_outputs(settings, settings.plan())
    print("\n" + outputs.console)
    written = [outputs.results_json, outputs.markdown, outputs.plot] + [p for p in [outputs.diagnostics_plot] if p]
    print(f"\nwrote {', '.join(written)}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
