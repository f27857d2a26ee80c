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
``--num-experts 8``) go to every run, after the presets. Run it again to resume: complete runs are
kept, interrupted ones resume from their last checkpoint. ``--routers`` picks a subset,
``--launcher "torchrun --nproc-per-node 8"`` runs each job distributed, ``--report-only`` only
rewrites the outputs from the runs on disk.

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
from megatron_evomoe.moe.routers import available_routers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OWNED = ("--seed", "--data-seed", "--train-iters", "--log-json", "--save", "--load", "--save-interval",
         "--moe-router-type")


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--output-dir", required=True)
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
    parser.add_argument("--model-size", choices=list(MODEL_SIZES), default="tiny")
    parser.add_argument("--train-iters", type=int, default=200)
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--global-batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--min-lr", type=float, default=1e-4)
    parser.add_argument("--eval-interval", type=int, default=None, help="default: train iters / 10")
    parser.add_argument("--eval-iters", type=int, default=4)
    parser.add_argument("--log-interval", type=int, default=None, help="default: eval interval / 2")
    parser.add_argument("--save-interval", type=int, default=None, help="default: train iters / 4")
    parser.add_argument("--target", default="switch", help="whose final PPL the FLOPs-to-target column uses")
    parser.add_argument("--launcher", default="", help="command prefix, e.g. 'torchrun --nproc-per-node 8'")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep each run's checkpoints")
    parser.add_argument("--report-only", action="store_true", help="no training: outputs from the runs on disk")
    args, passthrough = parser.parse_known_args(argv)
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
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    eval_interval = args.eval_interval or max(1, args.train_iters // 10)
    settings = ComparisonSettings(
        output_dir=args.output_dir, variants=variants, seeds=args.seeds, model=MODEL_SIZES[args.model_size],
        train_iters=args.train_iters, micro_batch_size=args.micro_batch_size,
        global_batch_size=args.global_batch_size, lr=args.lr, min_lr=args.min_lr,
        eval_interval=eval_interval, eval_iters=args.eval_iters,
        log_interval=args.log_interval or max(1, eval_interval // 2),
        save_interval=args.save_interval or max(1, args.train_iters // 4),
        passthrough=passthrough, target=args.target, skipped=skipped, protocol=args.protocol,
        data_seed=args.data_seed,
    )
    for name, why in skipped.items():
        print(f"skipping {name}: {why}")
    failures = []
    if not args.report_only:
        launcher = subprocess_launcher(os.path.join(REPO, "pretrain_gpt_moe.py"), shlex.split(args.launcher))
        failures = run_all(settings, launcher, args.keep_checkpoints)
    outputs = write_outputs(settings, settings.plan())
    print("\n" + outputs.console)
    print(f"\nwrote {outputs.results_json}, {outputs.markdown}, {outputs.plot}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
