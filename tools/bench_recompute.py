"""Activation memory and step time of no / full / MoE-aware recomputation on the demo model.

    python tools/bench_recompute.py                     # 2 gloo ranks, EP 2, alltoall, CPU
    python tools/bench_recompute.py --world-size 1 --steps 5

The demo model of ``tools/demo.py``: 4 layers, hidden 128, 4 heads, FFN 512, 4 experts (Switch
top-1) on layers 1 and 3, sequence 128, micro-batch 8, vocabulary 4096, fp32. For each mode the
same model (same weights, same batch) runs forward + backward:

* ``none`` -- everything autograd needs is kept;
* ``full`` -- ``--recompute-granularity full --recompute-method uniform --recompute-num-layers 1``:
  each transformer layer keeps its input and is re-run in backward, all-to-alls included;
* ``moe_aware`` -- ``--moe-recompute moe_aware`` alone: the MoE layers' router and experts are
  recomputed, the all-to-alls run once (see ``megatron_evomoe/moe/recompute.py``);
* ``full+moe_aware`` -- the paper's MoE-aware recomputation: full recomputation whose all-to-alls are
  replayed from what they received in the forward pass (``megatron_evomoe/moe/dispatch/replay.py``;
  the recorded buffers are counted as saved bytes);
* ``selective`` -- megatron's selective recomputation (core attention), alone and with moe_aware.

Printed per mode: bytes autograd saves in forward (``SavedTensorMeter``: distinct storages,
parameters excluded; the CPU stand-in for peak activation memory), the part saved inside the MoE
layers, the median forward+backward time (slowest rank; the modes take turns step by step after a
warm-up round, so that other load on the machine hits them alike), the forward-direction
exchanges (counts, dispatch, combine) that backward re-ran, and, on a GPU, the CUDA peak.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

MODES = {
    "none": [],
    "full": ["--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1"],
    "moe_aware": ["--moe-recompute", "moe_aware"],
    "full+moe_aware": [
        "--recompute-granularity", "full", "--recompute-method", "uniform", "--recompute-num-layers", "1",
        "--moe-recompute", "moe_aware",
    ],
    "selective": ["--recompute-granularity", "selective"],
    "sel+moe_aware": ["--recompute-granularity", "selective", "--moe-recompute", "moe_aware"],
}
DEMO = [
    "--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128",
    "--num-experts", "4", "--moe-layer-freq", "2", "--micro-batch-size", "8", "--hidden-dropout", "0.1",
    "--attention-dropout", "0.1", "--seed", "1234", "--train-iters", "1", "--lr", "1e-3",  # required; no training
]
VOCAB = 4096


def _parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world-size", type=int, default=2, help="gloo ranks; expert parallel over all of them")
    parser.add_argument("--dispatcher", default="alltoall")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after one warm-up)")
    return parser.parse_args(argv)


class _MoEMeters:
    """A SavedTensorMeter around every MoE layer's forward (inner hooks take precedence)."""

    def __init__(self, layers, meter_cls):
        self.meters, self.handles = [], []
        for layer in layers:
            meter = meter_cls(layer.parameters())
            self.meters.append(meter)
            self.handles.append(layer.register_forward_pre_hook(self._enter(meter)))
            self.handles.append(layer.register_forward_hook(self._exit(meter)))

    @staticmethod
    def _enter(meter):
        def hook(*_):
            meter.__enter__()  # a pre-hook must return None, or it replaces the layer's input

        return hook

    @staticmethod
    def _exit(meter):
        def hook(*_):
            meter.__exit__(None, None, None)

        return hook

    def remove(self) -> int:
        for handle in self.handles:
            handle.remove()
        return sum(m.saved_bytes for m in self.meters)


def _measure(args: argparse.Namespace) -> dict:
    import logging

    import torch
    import torch.distributed as dist

    from megatron_evomoe import initialize
    from megatron_evomoe.arguments import parse_args
    from megatron_evomoe.models.gpt import build_gpt_model, gpt_forward
    from megatron_evomoe.moe.activation_memory import SavedTensorMeter
    from megatron_evomoe.moe.evolution import moe_layers
    from megatron_evomoe.moe.router import RoutingState
    from megatron_evomoe.run_config import build_run_config

    # megatron's RNG tracker warns whenever the CPU generator moves inside a fork, which on a CPU
    # machine (where its "CUDA" generator is the CPU one) happens at every weight initialisation.
    logging.getLogger("megatron.core.tensor_parallel.random").setLevel(logging.ERROR)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch was imported before it was set
    world = args.world_size
    common = DEMO + [
        "--expert-model-parallel-size", str(world), "--moe-token-dispatcher-type", args.dispatcher,
        "--moe-ranks-per-node", "1", "--global-batch-size", str(8 * world),
    ]
    gen = torch.Generator().manual_seed(int(os.environ.get("RANK", "0")))
    tokens = torch.randint(0, VOCAB, (8, 128), generator=gen)
    batch = {"tokens": tokens, "labels": torch.roll(tokens, -1, 1), "position_ids": torch.arange(128).expand(8, -1)}
    runs = {mode: build_run_config(parse_args(common + flags), VOCAB, world) for mode, flags in MODES.items()}
    initialize.initialize(runs["none"].layout, runs["none"].training.seed)  # the same layout for every mode
    models = {mode: build_gpt_model(run.model) for mode, run in runs.items()}
    results = {mode: dict(saved=0, moe_saved=0, times=[], rerun=0, peak=None) for mode in MODES}
    # Modes take turns step by step, so that the load of a shared machine hits them alike.
    for step in range(args.steps + 1):
        for mode, model in models.items():
            row, layers = results[mode], moe_layers([model])
            for layer in layers:
                layer.set_routing_state(RoutingState())
            model.train()
            for p in model.parameters():
                p.grad = None
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            torch.manual_seed(step)  # same dropout, hence same routing, in every mode
            dist.barrier()
            start = time.perf_counter()
            meters = _MoEMeters(layers, SavedTensorMeter) if step == 1 else None
            with SavedTensorMeter(model.parameters()) as meter:
                loss = gpt_forward(model, batch).float().mean()
            if meters is not None:
                recorded = sum(
                    layer.dispatcher.replay.recorded_bytes()
                    for layer in layers
                    if getattr(layer.dispatcher, "replay", None) is not None
                )
                row["moe_saved"] = meters.remove() + recorded
                row["saved"] = meter.saved_bytes + row["moe_saved"]  # the outer meter misses the inner ones
            before = [dict(layer.dispatcher.comm_log.calls) for layer in layers]
            loss.backward()
            elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
            dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
            if step:  # step 0 warms up
                row["times"].append(float(elapsed))
            if step == 1 and hasattr(layers[0].dispatcher, "comm_log"):
                for layer, calls in zip(layers, before):
                    after = layer.dispatcher.comm_log.calls
                    row["rerun"] += sum(after[k] - calls.get(k, 0) for k in ("counts", "dispatch", "combine"))
            if torch.cuda.is_available():
                row["peak"] = max(row["peak"] or 0, torch.cuda.max_memory_allocated())
    for row in results.values():
        row["ms"] = 1e3 * statistics.median(row.pop("times"))
    initialize.shutdown()
    return results


def main(argv=None) -> int:
    from megatron_evomoe.analysis.local_world import run_local_world

    args = _parse(argv)
    threads = os.environ.get("OMP_NUM_THREADS", "1")
    results = run_local_world(_measure, args.world_size, args, env={"OMP_NUM_THREADS": threads})
    mine = results[0]
    print(
        f"demo model (4 layers, hidden 128, 4 experts, seq 128, micro-batch 8), {args.world_size} rank(s), "
        f"EP {args.world_size}, {args.dispatcher}; rank 0's saved activations"
    )
    print(f"{'mode':>14} {'saved MB':>9} {'in MoE MB':>10} {'vs none':>8} {'step ms':>8} {'a2a re-run in bwd':>18}"
          + (f" {'CUDA peak MB':>13}" if mine['none']['peak'] is not None else ""))
    base = mine["none"]["saved"]
    for mode, row in mine.items():
        line = (
            f"{mode:>14} {row['saved'] / 2**20:>9.2f} {row['moe_saved'] / 2**20:>10.2f} {row['saved'] / base:>8.2f} "
            f"{row['ms']:>8.1f} {row['rerun']:>18}"
        )
        if row["peak"] is not None:
            line += f" {row['peak'] / 2**20:>13.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
