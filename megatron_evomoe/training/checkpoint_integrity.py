"""Per-file checksums of a checkpoint: a flipped bit in a ``.distcp`` file is an error, not a silent load.

dist_checkpointing reads tensors by byte range, so a corrupted byte inside tensor data loads as a
different number. At save, every file of the checkpoint directory gets its size and CRC-32 recorded in
``checksums.json``; at load, each file is checked before anything is read. The ranks share the work
(file ``i`` is hashed by rank ``i mod world``), so it costs one extra read of the checkpoint spread
over all ranks (CRC-32 runs at several GB/s per core). Checkpoints written before this existed have no
manifest and load unchecked, with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import zlib
from typing import Dict, List, Optional

import torch.distributed as dist

logger = logging.getLogger(__name__)

MANIFEST_FILE = "checksums.json"
_CHUNK = 16 << 20


class CorruptCheckpoint(ValueError):
    """A checkpoint file differs from what was written."""


def file_crc32(path: str) -> str:
    """CRC-32 of a file's bytes, as 8 hex digits."""
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def _files(ckpt_dir: str) -> List[str]:
    """The directory's files as rank 0 sees them (other nodes' view of a shared file system may lag)."""
    names = [None]
    if dist.get_rank() == 0:
        names[0] = sorted(
            name for name in os.listdir(ckpt_dir)
            if name != MANIFEST_FILE and os.path.isfile(os.path.join(ckpt_dir, name))
        )
    dist.broadcast_object_list(names, src=0)
    return names[0]


def _my_share(names: List[str]) -> List[str]:
    rank, world = dist.get_rank(), dist.get_world_size()
    return names[rank::world]


def _gather(local):
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def checksum_manifest(ckpt_dir: str) -> Dict[str, dict]:
    """Size and CRC-32 of every file in ``ckpt_dir``, on every rank (collective).

    Raises OSError on every rank when some rank cannot read its share.
    """
    local: Dict[str, dict] = {}
    failure = None
    try:
        for name in _my_share(_files(ckpt_dir)):
            path = os.path.join(ckpt_dir, name)
            local[name] = {"size": os.path.getsize(path), "crc32": file_crc32(path)}
    except OSError as exc:
        failure = f"cannot read {exc.filename}: {exc.strerror}"
    entries: Dict[str, dict] = {}
    failures = []
    for part, problem in _gather((local, failure)):
        entries.update(part)
        failures += [problem] if problem else []
    if failures:
        raise OSError(errno.EIO, failures[0])
    return entries


def write_manifest_file(ckpt_dir: str, entries: Dict[str, dict]) -> None:
    """Write ``checksums.json`` (rank 0)."""
    with open(os.path.join(ckpt_dir, MANIFEST_FILE), "w") as f:
        json.dump({"algorithm": "crc32", "files": entries}, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())


def _check_file(ckpt_dir: str, name: str, expected: dict) -> Optional[str]:
    path = os.path.join(ckpt_dir, name)
    if not os.path.isfile(path):
        return f"checkpoint file {path} is missing ({MANIFEST_FILE} lists it)"
    size = os.path.getsize(path)
    if size != expected["size"]:
        return f"checkpoint file {path} is corrupt: {size} bytes, {expected['size']} were written"
    crc = file_crc32(path)
    if crc != expected["crc32"]:
        return f"checkpoint file {path} is corrupt: CRC-32 {crc}, {expected['crc32']} was written"
    return None


def verify_manifest(ckpt_dir: str) -> None:
    """Raise CorruptCheckpoint naming the first file that differs from ``checksums.json`` (collective)."""
    path = os.path.join(ckpt_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        logger.warning("%s has no %s (written before checksums existed): files not verified", ckpt_dir, MANIFEST_FILE)
        return
    try:
        files = json.load(open(path))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"{path} is corrupt: {exc}") from exc
    names = sorted(files)
    local = [problem for name in _my_share(names) if (problem := _check_file(ckpt_dir, name, files[name]))]
    problems = sorted(p for part in _gather(local) for p in part)
    if problems:
        raise CorruptCheckpoint(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
