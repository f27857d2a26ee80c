"""Checkpoints through megatron-core's distributed checkpointing (resharding across TP/PP/EP).

Layout of ``--save DIR``::

    DIR/latest_checkpointed_iteration.txt   the iteration of the newest complete checkpoint
    DIR/iter_0000020/                       megatron dist_checkpointing files (+ run_meta.json)

A checkpoint is written to ``iter_XXXXXXX.tmp`` by all ranks, renamed by rank 0 once every rank
has finished, and only then does the tracker move (written to a temporary file and renamed). A
crash at any point leaves the previous checkpoint as the one that loads. Model, optimizer (with
fp32 master weights and Adam moments), LR scheduler, the training position, the phase controller
and per-rank RNG states are saved; RNG states are restored only under the same world size.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import random
import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from megatron.core.dist_checkpointing.validation import StrictHandling
from megatron.core.distributed import DistributedDataParallel
from megatron.core.transformer.module import Float16Module
from torch.distributed.checkpoint.api import CheckpointException

from megatron_evomoe.training import checkpoint_files

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
META_FILE = "run_meta.json"


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt or does not fit the model being trained."""


@dataclass
class TrainState:
    """Where training stands; everything the loop needs to resume exactly."""

    iteration: int = 0
    consumed_samples: int = 0
    skipped_iters: int = 0
    floating_point_operations: float = 0.0
    """Cumulative training FLOPs actually computed so far."""
    consumed_tokens: int = 0


def checkpoint_dir(root: str, iteration: int) -> str:
    """``root/iter_0000042``."""
    return os.path.join(root, f"iter_{iteration:07d}")


def read_tracker(root: str) -> int:
    """The iteration named by ``root``'s tracker file (CheckpointError when absent or garbled)."""
    path = os.path.join(root, TRACKER_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"no checkpoint in {root}: {TRACKER_FILE} is missing")
    raw = open(path, "rb").read()
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: expected an iteration number, found {len(raw)} bytes of binary data") from None
    if not (text.isdigit() and text.isascii()):
        raise CheckpointError(f"{path}: expected an iteration number, found {text[:40]!r}")
    return int(text)


def has_checkpoint(root: str) -> bool:
    """Whether ``root`` names a checkpoint to resume from (its tracker file exists).

    Without a tracker, ``--load`` starts from scratch, as in Megatron-LM, unless ``root`` holds
    finished ``iter_*`` directories: then the tracker was lost, and starting over would overwrite them.
    """
    if os.path.isfile(os.path.join(root, TRACKER_FILE)):
        return True
    finished = sorted(n for n in os.listdir(root) if n.startswith("iter_") and "." not in n) if os.path.isdir(root) else []
    if finished:
        raise CheckpointError(
            f"{root} holds checkpoints ({', '.join(finished[-3:])}) but no {TRACKER_FILE}: write the iteration to "
            f"resume from into {os.path.join(root, TRACKER_FILE)}, or move them away to start from scratch"
        )
    return False


def _rng_state() -> Dict[str, Any]:
    return {
        "random": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }


def _set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _rng_sharded_object(data: Any) -> ShardedObject:
    world, rank = dist.get_world_size(), dist.get_rank()
    return ShardedObject("rng_state", data, (world,), (rank,), replica_id=0)


def _model_sharded_state_dict(model_chunks: List[torch.nn.Module]) -> Dict[str, Any]:
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages are not supported")
    return unwrap_model(model_chunks[0]).sharded_state_dict()


def save_checkpoint(
    root: str,
    state: TrainState,
    model_chunks: List[torch.nn.Module],
    optimizer,
    scheduler,
    extra: Optional[Dict[str, Any]] = None,
    run_meta: Optional[Dict[str, Any]] = None,
) -> str:
    """Write the checkpoint of ``state.iteration`` atomically; returns its directory.

    Raises CheckpointError (one line: the directory and the OS's reason, e.g. "No space left on
    device") when it cannot be written; its temporary directory is then removed and the previous
    checkpoint stays the latest. A failed data-file write fails on every rank; a failure of rank
    0's own files (``common.pt``) fails rank 0, whose exit makes the launcher stop the others.
    """
    final_dir = checkpoint_dir(root, state.iteration)
    tmp_dir = final_dir + ".tmp"
    try:
        return _write_checkpoint(root, final_dir, tmp_dir, state, model_chunks, optimizer, scheduler, extra, run_meta)
    except (OSError, RuntimeError, CheckpointException) as exc:
        reason = checkpoint_files.write_failure_reason(exc, tmp_dir if os.path.isdir(tmp_dir) else root)
        if dist.get_rank() == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final_dir}: {reason}") from exc


def _write_checkpoint(root, final_dir, tmp_dir, state, model_chunks, optimizer, scheduler, extra, run_meta) -> str:
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(tmp_dir)
    dist.barrier()
    model_sd = _model_sharded_state_dict(model_chunks)
    sharded = {
        "model": model_sd,
        "optimizer": optimizer.sharded_state_dict(model_sd),
        "opt_param_scheduler": scheduler.state_dict(),
        "train_state": asdict(state),
        "extra": extra or {},
        "rng_state": _rng_sharded_object(_rng_state()),
    }
    dist_checkpointing.save(sharded, tmp_dir)
    dist.barrier()
    failure = None
    if rank == 0:
        try:
            _publish(root, final_dir, tmp_dir, state.iteration, run_meta)
        except OSError as exc:
            failure = exc
    # Every rank learns whether rank 0 published (this replaces a barrier), so all fail alike.
    reason = _from_rank0(None if failure is None else failure.strerror or str(failure))
    if failure is not None:
        raise failure
    if reason is not None:
        raise OSError(errno.EIO, reason)
    return final_dir


def _publish(root: str, final_dir: str, tmp_dir: str, iteration: int, run_meta: Optional[Dict[str, Any]]) -> None:
    """Rank 0: run metadata, rename ``.tmp`` to its final name, then move the tracker."""
    with open(os.path.join(tmp_dir, META_FILE), "w") as f:
        json.dump(run_meta or {}, f, indent=1, sort_keys=True)
    if os.path.exists(final_dir):
        stale = final_dir + ".old"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final_dir, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp_dir, final_dir)
    tracker_tmp = os.path.join(root, TRACKER_FILE + ".tmp")
    with open(tracker_tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tracker_tmp, os.path.join(root, TRACKER_FILE))


def _from_rank0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def check_run_meta(ckpt_dir: str, run_meta: Dict[str, Any], keys: List[str]) -> None:
    """Raise CheckpointError naming the first architecture field that differs from this run."""
    path = os.path.join(ckpt_dir, META_FILE)
    if not os.path.isfile(path):
        raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint ({META_FILE} missing)")
    try:
        saved = json.load(open(path, "rb"))
    except ValueError as exc:  # not JSON, or not text at all
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path} is corrupt: expected a JSON object")
    for key in keys:
        if key in saved and key in run_meta and saved[key] != run_meta[key]:
            if key == "precision":
                raise CheckpointError(
                    f"checkpoint {ckpt_dir} was saved in {_precision_flags(saved[key])}, this run is "
                    f"{_precision_flags(run_meta[key])}: its optimizer state does not fit; use the same precision "
                    "flag, or take the weights only with --no-load-optim or --finetune"
                )
            flag = "--" + key.replace("_", "-")
            raise CheckpointError(
                f"checkpoint {ckpt_dir} was saved with {flag} {saved[key]}, this run has {run_meta[key]}"
            )


def _precision_flags(precision: str) -> str:
    return {"bf16": "bf16 (--bf16)", "fp16": "fp16 (--fp16)"}.get(precision, "fp32 (neither --bf16 nor --fp16)")


def load_checkpoint(
    root: str,
    model_chunks: List[torch.nn.Module],
    optimizer=None,
    scheduler=None,
    load_rng: bool = True,
    run_meta: Optional[Dict[str, Any]] = None,
    meta_keys: Optional[List[str]] = None,
    strict_model: bool = True,
    iteration: Optional[int] = None,
) -> tuple[TrainState, Dict[str, Any]]:
    """Load the newest (or the given) checkpoint from ``root`` into the model and, if given, the
    optimizer and scheduler. Returns the saved TrainState and the ``extra`` dict."""
    iteration = read_tracker(root) if iteration is None else iteration
    ckpt_dir = checkpoint_dir(root, iteration)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"tracker in {root} names iteration {iteration}, but {ckpt_dir} is missing")
    check_run_meta(ckpt_dir, run_meta or {}, meta_keys or [])
    problem = _from_rank0(checkpoint_files.missing_or_truncated(ckpt_dir) if dist.get_rank() == 0 else None)
    if problem is not None:
        raise CheckpointError(problem)
    model_sd = _model_sharded_state_dict(model_chunks)
    template: Dict[str, Any] = {"model": model_sd}
    if optimizer is not None:
        template["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    same_world = _saved_world_size(ckpt_dir) == dist.get_world_size()
    if load_rng and same_world:
        template["rng_state"] = _rng_sharded_object(None)
    try:
        loaded = dist_checkpointing.load(template, ckpt_dir, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    except (Exception, CheckpointException) as exc:  # many types (CheckpointException is a BaseException)
        raise CheckpointError(checkpoint_files.load_failure_reason(ckpt_dir, exc)) from exc
    missing, unexpected = [], []
    result = unwrap_model(model_chunks[0]).load_state_dict(loaded["model"], strict=False)
    missing, unexpected = _real_mismatches(result)
    if strict_model and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {ckpt_dir} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if optimizer is not None:
        optimizer.load_state_dict(loaded["optimizer"])
    if scheduler is not None and "opt_param_scheduler" in loaded:
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
    if load_rng:
        if same_world:
            _set_rng_state(loaded["rng_state"])
        else:
            logger.warning("checkpoint saved under another world size: RNG states not restored")
    state = TrainState(**loaded.get("train_state", {"iteration": iteration}))
    return state, loaded.get("extra", {})


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside megatron's DDP / Float16Module wrappers."""
    while isinstance(model, (DistributedDataParallel, Float16Module)):
        model = model.module
    return model


def _real_mismatches(result) -> tuple[list, list]:
    # megatron modules keep TE "_extra_state" entries that may legitimately be absent.
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("_extra_state")]
    return missing, unexpected


def _saved_world_size(ckpt_dir: str) -> Optional[int]:
    meta = os.path.join(ckpt_dir, META_FILE)
    try:
        return int(json.load(open(meta)).get("world_size"))
    except (OSError, ValueError, TypeError):
        return None
