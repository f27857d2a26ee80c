"""Checks at start-up that would otherwise fail hours later or with a traceback.

* Output paths: ``--save`` must be a directory this process can write (created with its parents, as
  Megatron-LM does, when missing), ``--log-json`` a file, ``--tensorboard-dir`` a directory, and
  ``--load``, when it exists, a directory. A read-only or full ``--save`` is found before training,
  not at the first checkpoint.
* Memory: a ``--seq-length`` (x ``--micro-batch-size``) whose activations alone exceed the memory of
  the device is refused with the estimate (``analysis/memory_estimate.py``; without a fused attention
  kernel, as on the CPU, the s x s attention scores of every layer are counted).

Each failure is a ValueError with one line naming the flag.
"""

from __future__ import annotations

import os
import uuid

import torch

from megatron_evomoe import compat
from megatron_evomoe.config import TrainingConfig
from megatron_evomoe.training.dry_run import GIB, stage_activation_bytes


def check_startup(run) -> None:
    """Every start-up check of a training run (``run``: a validated RunConfig)."""
    check_output_paths(run.training)
    check_activation_memory(run)


def check_output_paths(training: TrainingConfig) -> None:
    """``--save``, ``--log-json``, ``--tensorboard-dir`` and ``--load`` point at usable places."""
    if training.save:
        writable_directory(training.save, "--save")
    if training.tensorboard_dir:
        writable_directory(training.tensorboard_dir, "--tensorboard-dir")
    if training.log_json:
        appendable_file(training.log_json, "--log-json")
    if training.load and os.path.exists(training.load) and not os.path.isdir(training.load):
        raise ValueError(f"--load {training.load} is a file, not a checkpoint directory")


def writable_directory(path: str, flag: str) -> None:
    """Create ``path`` (with parents) if missing, and check a file can be written in it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a file, not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot create the directory ({exc.strerror})") from None
    probe = os.path.join(path, f".write_test_{uuid.uuid4().hex}")
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
    except OSError as exc:
        raise ValueError(f"{flag} {path} is not writable ({exc.strerror})") from None
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def appendable_file(path: str, flag: str) -> None:
    """``path`` is (or can be created as) a file this process can append to."""
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path} is a directory; give a file path")
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
        with open(path, "a"):
            pass
    except OSError as exc:
        raise ValueError(f"{flag} {path}: cannot write ({exc.strerror})") from None


def device_memory_bytes() -> int:
    """Memory one rank may use: its GPU's, or on the CPU the machine's RAM shared by the local ranks."""
    if compat.device_is_cuda():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def check_activation_memory(run, available: int | None = None) -> None:
    """Refuse a configuration whose activations alone (steady routing, no headroom) exceed the
    device's memory: it can only end in an out-of-memory error, possibly after a long data load."""
    available = device_memory_bytes() if available is None else available
    fused = compat.device_is_cuda()
    topk = float(run.model.moe_router_topk or 1)
    need = max(
        stage_activation_bytes(run, stage, topk, fused_attention=fused)
        for stage in range(run.layout.pipeline_model_parallel_size)
    )
    if need > available:
        training = run.training
        raise ValueError(
            f"--seq-length {training.seq_length} with --micro-batch-size {training.micro_batch_size} needs an "
            f"estimated {need / GIB:,.1f} GiB of activations per rank, more than the {available / GIB:,.1f} GiB "
            f"this rank has: lower them, or add --tensor-model-parallel-size, --pipeline-model-parallel-size or "
            f"--recompute-granularity full (--dry-run prints the estimate)"
        )
