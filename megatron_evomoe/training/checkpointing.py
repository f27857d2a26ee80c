"""Checkpoints through megatron-core's distributed checkpointing (resharding across TP/PP/EP/DP).

Layout of ``--save DIR``::

    DIR/latest_checkpointed_iteration.txt   the iteration of the newest good checkpoint
    DIR/iter_0000020/                       megatron dist_checkpointing files, run_meta.json,
                                            checksums.json (size and CRC-32 of every file)
    DIR/iter_0000024.nonfinite/             written during a non-finite streak: never latest

A checkpoint is written to ``iter_XXXXXXX.tmp`` by all ranks, renamed by rank 0 once every rank
has finished, and only then does the tracker move (written to a temporary file and renamed). A
crash at any point leaves the previous checkpoint as the one that loads. Model, optimizer (with
fp32 master weights and Adam moments, keyed in model space: ``optimizer_checkpoint.py``), LR
scheduler, the training position, the phase controller and per-rank RNG states are saved; RNG
states are restored only under the same world size. ``common.pt`` also holds what Megatron-LM's
loader reads (``args``, ``iteration``, ``checkpoint_version``, ...; ``megatron_lm_args.py``).
At load, files are checked against their checksums and tensors must be finite.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, List, Optional

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

from megatron_evomoe.errors import InputError
from megatron_evomoe.training import checkpoint_files
from megatron_evomoe.training.checkpoint_integrity import CorruptCheckpoint, checksum_manifest, verify_manifest
from megatron_evomoe.training.checkpoint_integrity import write_manifest_file
from megatron_evomoe.training.finite_check import first_nonfinite_loaded
from megatron_evomoe.training.optimizer_checkpoint import FORMAT as OPTIMIZER_FORMAT
from megatron_evomoe.training.optimizer_checkpoint import ModelSpaceOptimizerState

logger = logging.getLogger(__name__)

TRACKER_FILE = "latest_checkpointed_iteration.txt"
META_FILE = "run_meta.json"
NONFINITE_SUFFIX = ".nonfinite"
_ITER_DIR = re.compile(r"iter_(\d{7})")
CONTENT_METADATA = {
    "non_homogeneous_layers": True,  # one key per layer (decoder.layers.3....), MoE or dense
    "singleton_local_shards": False,
    "chained_optim_avoid_prefix": True,  # optimizer tensors keyed by parameter only
    "distrib_optim_sharding_type": "fully_reshardable",
}
"""How the tensors are keyed, stored in the checkpoint as Megatron-LM does; its loader (and ours)
builds the model's keys from it."""




class CheckpointError(InputError):
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


def _model_sharded_state_dict(model_chunks: List[torch.nn.Module], metadata: Optional[dict]) -> Dict[str, Any]:
    if len(model_chunks) != 1:
        raise NotImplementedError("virtual pipeline stages are not supported")
    return unwrap_model(model_chunks[0]).sharded_state_dict(metadata=metadata)


def save_checkpoint(
    root: str,
    state: TrainState,
    model_chunks: List[torch.nn.Module],
    optimizer,
    scheduler,
    extra: Optional[Dict[str, Any]] = None,
    run_meta: Optional[Dict[str, Any]] = None,
    common: Optional[Dict[str, Any]] = None,
    latest: bool = True,
) -> str:
    """Write the checkpoint of ``state.iteration`` atomically; returns its directory.

    ``common`` adds top-level entries to ``common.pt`` (Megatron-LM's ``args``, ``iteration``, ...).
    Without a ``scheduler`` none is saved: a run resuming from it starts its LR schedule afresh.
    With ``latest=False`` the checkpoint goes to ``iter_XXXXXXX.nonfinite`` and the tracker stays.

    Raises CheckpointError (one line: the directory and the OS's reason, e.g. "No space left on
    device") when it cannot be written; its temporary directory is then removed and the previous
    checkpoint stays the latest. A failed data-file write fails on every rank; a failure of rank
    0's own files (``common.pt``) fails rank 0, whose exit makes the launcher stop the others.
    """
    final_dir = checkpoint_dir(root, state.iteration) if latest else nonfinite_dir(root, state.iteration)
    tmp_dir = final_dir + ".tmp"
    contents = dict(extra=extra, run_meta=run_meta, common=common)
    try:
        return _write_checkpoint(root, final_dir, tmp_dir, state, model_chunks, optimizer, scheduler, latest, **contents)
    except (OSError, RuntimeError, CheckpointException) as exc:
        reason = checkpoint_files.write_failure_reason(exc, tmp_dir if os.path.isdir(tmp_dir) else root)
        if dist.get_rank() == 0:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {final_dir}: {reason}") from exc


def _write_checkpoint(root, final_dir, tmp_dir, state, model_chunks, optimizer, scheduler, latest, extra, run_meta,
                      common) -> str:
    rank = dist.get_rank()
    if rank == 0:
        os.makedirs(root, exist_ok=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        os.makedirs(tmp_dir)
    dist.barrier()
    model_sd = _model_sharded_state_dict(model_chunks, CONTENT_METADATA)
    sharded = {
        "model": model_sd,
        "optimizer": ModelSpaceOptimizerState(optimizer, model_sd, is_loading=False).sharded_state_dict(),
        **({"opt_param_scheduler": scheduler.state_dict()} if scheduler is not None else {}),
        "train_state": asdict(state),
        "extra": extra or {},
        "rng_state": _rng_sharded_object(_rng_state()),
        **(common or {}),
    }
    dist_checkpointing.save(sharded, tmp_dir, content_metadata=CONTENT_METADATA)
    dist.barrier()
    _on_rank0_for_all(lambda: _write_run_meta(tmp_dir, run_meta))
    manifest = checksum_manifest(tmp_dir)  # of every file, run_meta.json included
    _on_rank0_for_all(lambda: _publish(root, final_dir, tmp_dir, state.iteration if latest else None, manifest))
    return final_dir


def _on_rank0_for_all(action: Callable[[], None]) -> None:
    """Run ``action`` on rank 0; if it fails, every rank raises (this replaces a barrier)."""
    failure = None
    if dist.get_rank() == 0:
        try:
            action()
        except OSError as exc:
            failure = exc
    reason = _from_rank0(None if failure is None else failure.strerror or str(failure))
    if failure is not None:
        raise failure
    if reason is not None:
        raise OSError(errno.EIO, reason)


def _write_run_meta(tmp_dir: str, run_meta: Optional[Dict[str, Any]]) -> None:
    with open(os.path.join(tmp_dir, META_FILE), "w") as f:
        json.dump(run_meta or {}, f, indent=1, sort_keys=True)


def _publish(root: str, final_dir: str, tmp_dir: str, tracker: Optional[int], manifest: Dict[str, Any]) -> None:
    """Rank 0: the checksums, rename ``.tmp`` to its final name, then move the tracker (unless None)."""
    write_manifest_file(tmp_dir, manifest)
    if os.path.exists(final_dir):
        remove_directory(final_dir)
    os.replace(tmp_dir, final_dir)
    if tracker is not None:
        write_tracker(root, tracker)


def _from_rank0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def nonfinite_dir(root: str, iteration: int) -> str:
    """``root/iter_0000042.nonfinite``: a checkpoint written during a non-finite streak (never latest)."""
    return checkpoint_dir(root, iteration) + NONFINITE_SUFFIX


def write_tracker(root: str, iteration: Optional[int]) -> None:
    """Atomically make ``iteration`` the latest checkpoint of ``root`` (None: remove the tracker)."""
    path = os.path.join(root, TRACKER_FILE)
    if iteration is None:
        if os.path.exists(path):
            os.remove(path)
        return
    tracker_tmp = path + ".tmp"
    with open(tracker_tmp, "w") as f:
        f.write(str(iteration))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tracker_tmp, path)


def remove_directory(path: str) -> None:
    """Delete a checkpoint directory; renamed first, so no half-deleted ``iter_*`` is ever visible."""
    stale = path + ".old"
    shutil.rmtree(stale, ignore_errors=True)
    os.replace(path, stale)
    shutil.rmtree(stale, ignore_errors=True)


def saved_iterations(root: str) -> List[int]:
    """Iterations of the complete checkpoints (``iter_XXXXXXX`` directories) in ``root``, ascending."""
    if not os.path.isdir(root):
        return []
    found = (_ITER_DIR.fullmatch(name) for name in os.listdir(root))
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(root, m.group(0))))


def locate(root: str, iteration: Optional[int] = None) -> str:
    """The checkpoint directory of ``iteration`` (default: the tracker's) under ``root``; ``root`` may
    also name an ``iter_XXXXXXX`` directory itself."""
    if not os.path.isdir(root):
        raise CheckpointError(f"--load {root}: no such directory")
    if iteration is None and _ITER_DIR.fullmatch(os.path.basename(os.path.normpath(root))):
        return os.path.normpath(root)
    iteration = read_tracker(root) if iteration is None else iteration
    ckpt_dir = checkpoint_dir(root, iteration)
    if not os.path.isdir(ckpt_dir):
        raise CheckpointError(f"--load {root}: {ckpt_dir} is missing")
    return ckpt_dir


def read_args(ckpt_dir: str) -> tuple[argparse.Namespace, Dict[str, Any]]:
    """(Megatron-LM's ``args``, the whole ``common.pt``) of a checkpoint directory."""
    try:
        common = dist_checkpointing.load_common_state_dict(ckpt_dir)
    except Exception as exc:  # noqa: BLE001 - missing file, unpickling errors, ...
        raise CheckpointError(f"{ckpt_dir} is not a torch_dist checkpoint: cannot read its common.pt ({exc})") from None
    args = common.get("args") if isinstance(common, dict) else None
    if not isinstance(args, argparse.Namespace):
        raise CheckpointError(f"{ckpt_dir}/common.pt holds no Megatron-LM args: cannot tell its architecture")
    return args, common


def iteration_of(ckpt_dir: str) -> int:
    """The iteration of an ``iter_XXXXXXX`` checkpoint directory."""
    return int(_ITER_DIR.fullmatch(os.path.basename(os.path.normpath(ckpt_dir))).group(1))


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
    allow_nonfinite: bool = False,
) -> tuple[TrainState, Dict[str, Any]]:
    """Load the newest (or the given) checkpoint from ``root`` into the model and, if given, the
    optimizer and scheduler. Returns the saved TrainState and the ``extra`` dict.

    Every file is checked against the checksums written at save, and loaded weights and optimizer
    state must be finite (``allow_nonfinite``: only warn).
    """
    named_by_tracker = iteration is None
    iteration = read_tracker(root) if iteration is None else iteration
    ckpt_dir = checkpoint_dir(root, iteration)
    if not os.path.isdir(ckpt_dir):
        if named_by_tracker:
            raise CheckpointError(f"tracker in {root} names iteration {iteration}, but {ckpt_dir} is missing")
        raise CheckpointError(f"no checkpoint of iteration {iteration} in {root}: {ckpt_dir} is missing")
    check_run_meta(ckpt_dir, run_meta or {}, meta_keys or [])
    problem = _from_rank0(checkpoint_files.missing_or_truncated(ckpt_dir) if dist.get_rank() == 0 else None)
    if problem is not None:
        raise CheckpointError(problem)
    try:
        verify_manifest(ckpt_dir)
    except CorruptCheckpoint as exc:  # a damaged record header is the more precise message
        raise CheckpointError(checkpoint_files.first_damaged_record(ckpt_dir) or str(exc)) from exc
    common = _common_state(ckpt_dir)
    # Older checkpoints have no content metadata: megatron's defaults then describe them.
    model_sd = _model_sharded_state_dict(model_chunks, common.get("content_metadata"))
    template: Dict[str, Any] = {"model": model_sd}
    optimizer_state = None
    if optimizer is not None:
        if (common.get("optimizer") or {}).get("format") == OPTIMIZER_FORMAT:
            optimizer_state = ModelSpaceOptimizerState(optimizer, model_sd, is_loading=True)
            template["optimizer"] = optimizer_state.sharded_state_dict()
        else:  # older checkpoints: megatron's chained format, loadable under the same layout only
            template["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True)
    same_world = _saved_world_size(ckpt_dir) == dist.get_world_size()
    if load_rng and same_world:
        template["rng_state"] = _rng_sharded_object(None)
    try:
        loaded = dist_checkpointing.load(template, ckpt_dir, strict=StrictHandling.ASSUME_OK_UNEXPECTED)
    except (Exception, CheckpointException) as exc:  # many types (CheckpointException is a BaseException)
        raise CheckpointError(checkpoint_files.load_failure_reason(ckpt_dir, exc)) from exc
    named = list(loaded["model"].items())
    if optimizer_state is not None:
        named += optimizer_state.named_tensors(loaded["optimizer"])
    _refuse_nonfinite(ckpt_dir, named, allow_nonfinite)
    result = unwrap_model(model_chunks[0]).load_state_dict(loaded["model"], strict=False)
    missing, unexpected = _real_mismatches(result)
    if strict_model and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {ckpt_dir} does not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    if optimizer_state is not None:
        optimizer_state.load(loaded["optimizer"])
    elif optimizer is not None:
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


def _refuse_nonfinite(ckpt_dir: str, named: list, allow: bool) -> None:
    name = first_nonfinite_loaded(named)
    if name is None:
        return
    message = f"checkpoint {ckpt_dir} holds non-finite values in {name}"
    if not allow:
        raise CheckpointError(message + " (--allow-nonfinite-load loads it anyway)")
    if dist.get_rank() == 0:
        logger.warning("%s; loading it anyway (--allow-nonfinite-load)", message)


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


def _common_state(ckpt_dir: str) -> Dict[str, Any]:
    """``common.pt`` (``{}`` when unreadable: the load itself then names the problem)."""
    try:
        common = dist_checkpointing.load_common_state_dict(ckpt_dir)
    except Exception:  # noqa: BLE001 - many types
        return {}
    return common if isinstance(common, dict) else {}


def _saved_world_size(ckpt_dir: str) -> Optional[int]:
    meta = os.path.join(ckpt_dir, META_FILE)
    try:
        return int(json.load(open(meta)).get("world_size"))
    except (OSError, ValueError, TypeError):
        return None
