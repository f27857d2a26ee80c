"""Profile one MoE layer (top-1 Switch, EP = 1) beside the dense FFN, operator by operator.

    python tools/profile_moe_layer.py --tokens 512 2048                  # CPU time per operator
    python tools/profile_moe_layer.py --tokens 2048 --timer profiler     # torch.profiler, wall clock
    python tools/profile_moe_layer.py --tokens 2048 --no-grouped-gemm    # the per-expert loop

Prints, per token count, a markdown table of the MoE layer's top operators (ms per forward +
backward, share of the layer) with the dense FFN's time for the same operator. One thread by
default (``--threads``). The logic is in megatron_evomoe/analysis/moe_layer_profile.py.
"""

import argparse
import json
import sys
import warnings


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", nargs="+", type=int, default=[512, 2048])
    parser.add_argument("--experts", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--grouped-gemm", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--timer", choices=["cpu", "profiler"], default="cpu")
    parser.add_argument("--profiles", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="all operators as one JSON object per token count")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    warnings.filterwarnings("ignore")
    import torch

    from megatron_evomoe import initialize
    from megatron_evomoe.analysis.moe_layer_bench import BenchCase, build_dense, build_moe
    from megatron_evomoe.analysis.moe_layer_profile import markdown_table, profile_modules
    from megatron_evomoe.training.entry import quiet_megatron

    quiet_megatron()
    torch.set_num_threads(args.threads)
    initialize.initialize(initialize.ParallelLayout(), seed=0)
    for tokens in args.tokens:
        case = BenchCase(tokens, args.experts, args.hidden, args.ffn, grouped_gemm=args.grouped_gemm)
        modules = {"moe": build_moe(case, "cpu"), "dense": build_dense(case, "cpu", 1.0)}
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, 1, args.hidden, generator=gen).requires_grad_()
        grad = torch.randn(tokens, 1, args.hidden, generator=gen)
        result = profile_modules(modules, x, grad, args.profiles, timer=args.timer)
        if args.json:
            print(json.dumps({"tokens": tokens, "experts": type(modules["moe"].experts).__name__, **result}))
        else:
            print(f"\n{tokens} tokens, {args.experts} experts ({type(modules['moe'].experts).__name__}), "
                  f"{args.timer} timer, mean of {args.profiles} profiles\n{markdown_table(result, args.rows)}")
    initialize.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
