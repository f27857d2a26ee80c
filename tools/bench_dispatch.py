"""Benchmark the all-to-all dispatchers on fake nodes of this machine, beside the α-β cost model.

    python tools/bench_dispatch.py                                   # 2x2 and 2x4 fake nodes (gloo)
    python tools/bench_dispatch.py --topologies 2x2 --tokens 64 1024 --hidden 256 --repeats 5

For each topology ``NxR`` (N fake nodes of R ranks: ``--moe-ranks-per-node R``), dispatcher and
tokens per rank, every rank routes its tokens top-1 to uniformly random experts (one expert per
rank) and times ``dispatch + combine`` (forward, fp32). The table shows, per rank (the busiest one),
the data messages sent by one dispatch + combine within and across nodes and their bytes, the
measured time (slowest rank, median of the repeats), and the α-β model's prediction for the same
counts with parameters calibrated by ping-pong on this machine (``model(cal)``) and with the flag
defaults of a GPU cluster (``model(cluster)``: NVLink inside, 100 Gb/s InfiniBand across). Count
exchanges are not in the message columns (a few tiny messages per call). On fake nodes every link
is the same loopback, so only the message counts differ between intra and inter here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

DISPATCHERS = ("alltoall", "hierarchical", "hierarchical_2d", "auto")


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--topologies", nargs="+", default=["2x2", "2x4"], help="NxR: N nodes of R ranks")
    parser.add_argument("--tokens", nargs="+", type=int, default=[8, 128, 2048], help="tokens per rank")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dispatchers", nargs="+", default=list(DISPATCHERS), choices=DISPATCHERS)
    return parser.parse_args(argv)


def _measure_this_rank(rpn: int, args: argparse.Namespace) -> list:
    return _measure(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), rpn, args)


def _measure(rank: int, world: int, rpn: int, args: argparse.Namespace) -> list:
    import torch
    import torch.distributed as dist

    from megatron_evomoe.moe.dispatch import dispatcher_class
    from megatron_evomoe.moe.dispatch.calibration import calibrate
    from megatron_evomoe.moe.dispatch.cost_model import CostModel, RouteTraffic, predict_dispatch_combine
    from megatron_evomoe.moe.dispatch.options import DispatchOptions

    torch.set_num_threads(1)  # the ranks share the cores
    dist.init_process_group("gloo", rank=rank, world_size=world)
    singles = [dist.new_group([r]) for r in range(world)]
    pgs = SimpleNamespace(ep=dist.group.WORLD, expt_tp=singles[rank], tp_ep=dist.group.WORLD)
    rows = []
    probe = dispatcher_class("alltoall")(1, [rank], _config(world, "alltoall", rpn), pgs)
    calibrated = calibrate(dist.group.WORLD, probe.topology, CostModel.from_options(DispatchOptions()))
    cluster = CostModel.from_options(DispatchOptions())
    for name in args.dispatchers:
        # auto decides with the parameters measured here (what --moe-a2a-calibrate would find).
        config = _config(world, name, rpn, calibrated)
        dispatcher = dispatcher_class(name)(1, [rank], config, pgs)
        count_traffic = RouteTraffic.for_counts(dispatcher.count_exchange, dispatcher.topology)
        for tokens in args.tokens:
            gen = torch.Generator().manual_seed(rank * 7919 + tokens)
            hidden = torch.randn(tokens, args.hidden, generator=gen)
            experts = torch.randint(0, world, (tokens,), generator=gen)
            routing_map = torch.zeros(tokens, world, dtype=torch.bool)
            routing_map[torch.arange(tokens), experts] = True
            probs = routing_map.float()
            times = []
            for repeat in range(args.repeats + 1):
                dispatcher.comm_log.reset()
                dist.barrier()
                start = time.perf_counter()
                with torch.no_grad():
                    expert_input, _, _ = dispatcher.dispatch(hidden, probs, routing_map)
                    dispatcher.combine(expert_input)
                elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
                if repeat:  # the first call warms up connections and caches
                    times.append(float(elapsed))
            log = dispatcher.comm_log
            route = next(iter(log.routes))
            counts = torch.stack([routing_map.sum(0)])
            all_counts = [torch.zeros_like(counts) for _ in range(world)]
            dist.all_gather(all_counts, counts)
            counts = torch.cat(all_counts)
            traffic = RouteTraffic.build(route, dispatcher.topology, world)
            row_bytes, out_bytes = args.hidden * 4 + 4, args.hidden * 4
            mine = torch.tensor(
                [sum(log.messages[(k, lvl)] for k in ("dispatch", "combine")) for lvl in ("intra", "inter")]
                + [sum(log.bytes[(k, lvl)] for k in ("dispatch", "combine")) for lvl in ("intra", "inter")],
                dtype=torch.float64,
            )
            dist.all_reduce(mine, op=dist.ReduceOp.MAX)
            rows.append(
                {
                    "dispatcher": name if name != "auto" else f"auto->{route}",
                    "tokens": tokens,
                    "msgs_intra": int(mine[0]),
                    "msgs_inter": int(mine[1]),
                    "bytes_intra": int(mine[2]),
                    "bytes_inter": int(mine[3]),
                    "measured_ms": 1e3 * statistics.median(times),
                    "model_cal_ms": 1e3
                    * predict_dispatch_combine(traffic, counts, row_bytes, out_bytes, calibrated, count_traffic),
                    "model_cluster_ms": 1e3
                    * predict_dispatch_combine(traffic, counts, row_bytes, out_bytes, cluster, count_traffic),
                }
            )
    cal = calibrated
    dist.barrier()
    dist.destroy_process_group()
    return rows, (cal.intra.alpha, cal.intra.beta, cal.inter.alpha, cal.inter.beta)


def _config(world: int, name: str, rpn: int, model=None) -> SimpleNamespace:
    from megatron_evomoe.moe.dispatch.options import DispatchOptions

    params = {}
    if model is not None:
        params = dict(
            alpha_intra=model.intra.alpha, beta_intra=model.intra.beta,
            alpha_inter=model.inter.alpha, beta_inter=model.inter.beta,
        )
    return SimpleNamespace(
        num_moe_experts=world, moe_dispatch=DispatchOptions(dispatcher_type=name, ranks_per_node=rpn, **params)
    )


def run_topology(nodes: int, per_node: int, args: argparse.Namespace):
    """Run ``nodes * per_node`` gloo processes; returns rank 0's rows and calibration."""
    from megatron_evomoe.analysis.local_world import run_local_world

    return run_local_world(_measure_this_rank, nodes * per_node, per_node, args)[0]


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def main(argv=None) -> int:
    args = _parse(argv)
    print(f"dispatch + combine, fp32 hidden {args.hidden}, top-1 random routing, one expert per rank, gloo")
    header = (
        f"{'topo':>5} {'dispatcher':>24} {'tok/rank':>8} {'msgs intra':>10} {'msgs inter':>10} "
        f"{'bytes intra':>11} {'bytes inter':>11} {'measured ms':>11} {'model(cal)':>10} {'model(cluster)':>14}"
    )
    for topo in args.topologies:
        nodes, per_node = (int(x) for x in topo.lower().split("x"))
        rows, cal = run_topology(nodes, per_node, args)
        print(
            f"\n{topo}: calibrated alpha/beta intra {cal[0] * 1e6:.1f}us {1 / max(cal[1], 1e-15) / 1e9:.2f}GB/s, "
            f"inter {cal[2] * 1e6:.1f}us {1 / max(cal[3], 1e-15) / 1e9:.2f}GB/s (per-rank max over ranks)"
        )
        print(header)
        for row in rows:
            print(
                f"{topo:>5} {row['dispatcher']:>24} {row['tokens']:>8} {row['msgs_intra']:>10} {row['msgs_inter']:>10} "
                f"{_fmt_bytes(row['bytes_intra']):>11} {_fmt_bytes(row['bytes_inter']):>11} "
                f"{row['measured_ms']:>11.2f} {row['model_cal_ms']:>10.2f} {row['model_cluster_ms']:>14.3f}"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
