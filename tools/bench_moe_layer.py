"""Benchmark one MoE layer (top-1 Switch, N experts, EP = 1) against a dense FFN with the same active
parameters (FFN size = one expert's), forward + backward on the same tokens, side by side.

    python tools/bench_moe_layer.py                                  # CPU, a small grid
    python tools/bench_moe_layer.py --device cuda --dtype bf16 --hidden 1024 --ffn 4096 \
        --tokens 4096 16384 --experts 8 16 64 --json

On a shared CPU add ``--threads 1 --clock process`` (CPU time: other load does not inflate it).
Prints per configuration the median forward+backward time of both, their ratio (1.0 is the limit)
and memory (CUDA: peak allocated; CPU: activations saved for backward). ``--json`` prints one JSON
object per configuration instead (keys: tokens, num_experts, moe_ms, dense_ms, ratio, moe_mem_mb,
dense_mem_mb, mem_ratio, ...). The logic is in megatron_evomoe/analysis/moe_layer_bench.py.
"""

import argparse
import json
import sys
import warnings

from megatron_evomoe.analysis.moe_layer_bench import HEADER, BenchCase, format_row, run_cases


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--tokens", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument("--experts", nargs="+", type=int, default=[4, 16, 64])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024, help="FFN size of one expert and of the dense FFN")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--grouped-gemm", action="store_true", help="grouped-GEMM experts (GPU with TE)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    parser.add_argument(
        "--clock", choices=["wall", "process"], default="wall",
        help="process: CPU time of this process (load-independent on a shared CPU; use with --threads 1)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore")
    import torch.distributed as dist

    from megatron_evomoe import initialize
    from megatron_evomoe.training.entry import quiet_megatron

    quiet_megatron()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    owns_world = not dist.is_initialized()  # a caller (e.g. a test) may have one already
    if owns_world:
        initialize.initialize(initialize.ParallelLayout(), seed=0)
    cases = [BenchCase(t, e, args.hidden, args.ffn, args.dtype, args.grouped_gemm) for e in args.experts for t in args.tokens]
    if not args.json:
        print(f"device {args.device}, hidden {args.hidden}, FFN {args.ffn} (dense = one expert), {args.dtype}, "
              f"{args.clock} clock, median of {args.repeats}\n{HEADER}")
    emit = (lambda r: print(json.dumps(r), flush=True)) if args.json else (lambda r: print(format_row(r), flush=True))
    run_cases(cases, args.device, args.repeats, args.warmup, args.clock, emit)
    if owns_world:
        initialize.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
