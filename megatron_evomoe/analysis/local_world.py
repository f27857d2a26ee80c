"""Run a function on N processes of this machine as a torchrun-style gloo world.

Benchmarks (``tools/bench_dispatch.py``, ``tools/bench_recompute.py``) and the multi-rank tests
measure and check several ranks without a launcher: ``run_local_world(fn, world_size, *args)``
starts ``world_size`` processes with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and
MASTER_ADDR/PORT set (``env`` may override any of them, e.g. LOCAL_WORLD_SIZE to fake nodes), calls
``fn(*args)`` in each, and returns the results by rank. ``fn`` must be importable (module level).
An exception on any rank fails the call with that rank's traceback.

Processes fork from a server that has already imported ``preload``, so a rank starts in a fraction
of a second instead of re-importing torch and megatron-core (seconds per process on a small
machine). Each rank runs single-threaded unless ``env`` sets OMP_NUM_THREADS.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import socket
import traceback
from typing import Any, Callable, List, Optional, Sequence

import torch

DEFAULT_PRELOAD = ("megatron_evomoe", "torch", "megatron.core", "megatron_evomoe.training.loop")


def free_port() -> int:
    """A TCP port that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue, env: dict) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    os.environ.update(env)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # torch was imported before the variable
    try:
        result = fn(*args)
        # Serialised here: tensors sent through a queue as shared memory die with this process.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        queue.put((rank, True, buffer.getvalue()))
    except BaseException:  # report every failure to the parent, including SystemExit
        queue.put((rank, False, traceback.format_exc()))


def run_local_world(
    fn: Callable,
    world_size: int,
    *args: Any,
    env: Optional[dict] = None,
    timeout: float = 1800,
    preload: Sequence[str] = DEFAULT_PRELOAD,
) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` fresh processes; results ordered by rank."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    queue = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_worker, args=(rank, world_size, port, fn, args, queue, env or {}))
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    results: dict = {}
    try:
        for _ in range(world_size):
            rank, ok, value = queue.get(timeout=timeout)
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{value}")
            results[rank] = torch.load(io.BytesIO(value), weights_only=False)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    return [results[rank] for rank in range(world_size)]
