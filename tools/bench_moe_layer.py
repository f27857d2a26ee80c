"""Benchmark one MoE layer (EP = 1) against the dense FFN with the same FLOPs, and against
megatron-core's own MoE layer, forward + backward on the same tokens, side by side in one process.

    python tools/bench_moe_layer.py --compare megatron-core            # CPU: 8 experts, 512/2048/8192 tokens
    python tools/bench_moe_layer.py --compare megatron-core --router gshard
    python tools/bench_moe_layer.py --compare megatron-core --router dts --tau 0.3
    python tools/bench_moe_layer.py --compare per-expert-loop --experts 4 16 64   # grouped GEMM vs loop
    python tools/bench_moe_layer.py --device cuda --dtype bf16 --hidden 1024 --ffn 4096 \
        --tokens 4096 16384 --experts 8 16 64 --compare megatron-core --json

On a shared CPU add ``--threads 1 --clock process`` (CPU time: other load inflates it less).
The reference dense FFN has k times an expert's FFN size, k = experts per token (Switch 1,
GShard 2, DTS: measured at ``--tau``), so every ratio compares equal FLOPs; 1.0 is the limit.
Prints per configuration the median forward+backward time of each module, the ratios (ours /
dense, megatron-core / dense, ours / megatron-core, ours / per-expert loop) and memory (CUDA: peak
allocated; CPU: activations saved for backward). ``--json`` prints one JSON object per
configuration instead (keys: tokens, num_experts, router, experts_per_token, moe_ms, dense_ms,
ratio, megatron_ms, megatron_ratio, moe_vs_megatron, loop_ms, grouped_vs_loop, moe_mem_mb,
dense_mem_mb, mem_ratio, ...). The logic is in megatron_evomoe/analysis/moe_layer_bench.py.
"""

import argparse
import json
import sys

from megatron_evomoe.analysis.moe_layer_bench import (
    COMPARISONS,
    ROUTERS,
    BenchCase,
    add_layer_arguments,
    format_row,
    header,
    layer_world,
    run_cases,
)


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    add_layer_arguments(parser, tokens=[512, 2048, 8192])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--router", choices=ROUTERS, default="switch")
    parser.add_argument("--tau", type=float, default=1.0, help="DTS gate temperature (--router dts)")
    parser.add_argument(
        "--compare", nargs="+", choices=COMPARISONS, default=[],
        help="also time megatron-core's MoELayer and/or our layer with the per-expert loop",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall",
        help="process: CPU time of this process (steadier on a shared CPU; use with --threads 1)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    compare = tuple(args.compare)
    cases = [
        BenchCase(t, e, args.hidden, args.ffn, args.dtype, args.grouped_gemm, args.router, args.tau, compare)
        for e in args.experts for t in args.tokens
    ]
    with layer_world(args.threads):
        if not args.json:
            print(f"device {args.device}, hidden {args.hidden}, expert FFN {args.ffn}, router {args.router}, tau {args.tau}, "
                  f"{args.dtype}, {args.clock} clock, median of {args.repeats}; dense FFN = k experts' FLOPs\n"
                  f"{header(compare)}")
        emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else (lambda r: print(format_row(r), flush=True))
        run_cases(cases, args.device, args.repeats, args.warmup, args.clock, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
