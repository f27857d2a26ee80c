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

from megatron_evomoe.analysis.moe_layer_bench import add_layer_arguments, layer_world


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_layer_arguments(parser, tokens=[512, 2048])
    parser.add_argument("--timer", choices=["cpu", "profiler"], default="cpu")
    parser.add_argument("--profiles", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--json", action="store_true", help="all operators as one JSON object per token count")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    import torch

    from megatron_evomoe.analysis.moe_layer_bench import BenchCase, build_dense, build_moe
    from megatron_evomoe.analysis.moe_layer_profile import markdown_table, profile_modules

    with layer_world(args.threads or 1):
        for experts in args.experts:
            for tokens in args.tokens:
                case = BenchCase(tokens, experts, args.hidden, args.ffn, grouped_gemm=args.grouped_gemm)
                modules = {"moe": build_moe(case, "cpu"), "dense": build_dense(case, "cpu", 1.0)}
                gen = torch.Generator().manual_seed(0)
                x = torch.randn(tokens, 1, args.hidden, generator=gen).requires_grad_()
                grad = torch.randn(tokens, 1, args.hidden, generator=gen)
                result = profile_modules(modules, x, grad, args.profiles, timer=args.timer)
                name = type(modules["moe"].experts).__name__
                if args.json:
                    print(json.dumps({"tokens": tokens, "num_experts": experts, "experts": name, **result}))
                else:
                    print(f"\n{tokens} tokens, {experts} experts ({name}), {args.timer} timer, "
                          f"mean of {args.profiles} profiles\n{markdown_table(result, args.rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
