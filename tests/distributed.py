"""The one fixture for multi-rank tests: run a function on N gloo processes of this machine.

``run_ranks(fn, world_size, *args)`` spawns ``world_size`` processes with torchrun-style environment
variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR/PORT), calls
``fn(*args)`` in each and returns the list of return values by rank. ``fn`` must be importable (a
module-level function). An exception on any rank fails the call with that rank's traceback.
"""

from __future__ import annotations

import io
import os
import socket
import traceback
from typing import Any, Callable, List

import multiprocessing as mp

import torch


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, fn: Callable, args: tuple, queue, env: dict) -> None:
    os.environ.update(env)
    torch.set_num_threads(1)  # OMP_NUM_THREADS below comes too late: torch is preloaded
    os.environ.update(
        RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    try:
        result = fn(*args)
        # Serialised here: tensors sent through a queue as shared memory die with this process.
        buffer = io.BytesIO()
        torch.save(result, buffer)
        queue.put((rank, True, buffer.getvalue()))
    except BaseException:  # report every failure to the parent, including SystemExit
        queue.put((rank, False, traceback.format_exc()))


# Children fork from a server that has already imported these: a rank starts in a fraction of a
# second instead of re-importing torch and megatron-core (seconds per process on 2 cores).
_PRELOAD = ["megatron_evomoe", "torch", "megatron.core", "megatron_evomoe.training.loop", "tests.tiny"]


def _context():
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    return ctx


def run_ranks(fn: Callable, world_size: int, *args: Any, env: dict | None = None, timeout: float = 600) -> List[Any]:
    """Run ``fn(*args)`` on ``world_size`` fresh processes; results ordered by rank."""
    ctx = _context()
    queue = ctx.Queue()
    port = _free_port()
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
