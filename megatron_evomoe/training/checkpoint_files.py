"""The files of one checkpoint directory: what must be there, and one-line reasons when reading or
writing them fails.

Why: megatron's and torch's loaders report a missing, truncated or overwritten file as a stack of
tracebacks from every rank (or as ``'str' object has no attribute 'iterdir'`` for a missing
``common.pt``), and a full disk as an ``inline_container.cc`` error. These functions turn each
case into one line that names the file and what is wrong with it.

A megatron ``torch_dist`` checkpoint directory holds ``metadata.json`` (format), ``common.pt``
(the non-tensor state), ``.metadata`` (torch's index: for every stored item, the ``.distcp`` file,
byte offset and length) and the ``__R_T.distcp`` data files. Every item in a ``.distcp`` file is
a ``torch.save`` record, i.e. a zip archive starting with ``PK\\x03\\x04``.
"""

from __future__ import annotations

import os
import uuid
from collections import defaultdict
from typing import Dict, Iterator, Optional

from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException

REQUIRED_FILES = ("metadata.json", "common.pt", ".metadata")
_RECORD_MAGIC = b"PK\x03\x04"
_PROBE_BYTES = 1 << 20


def missing_or_truncated(ckpt_dir: str) -> Optional[str]:
    """What is structurally wrong with ``ckpt_dir`` (a missing file, an unreadable index, a data
    file shorter than its index says), or None. Reads the index and stats the files only."""
    for name in REQUIRED_FILES:
        if not os.path.isfile(os.path.join(ckpt_dir, name)):
            return f"checkpoint {ckpt_dir} is incomplete: {name} is missing"
    index_path = os.path.join(ckpt_dir, ".metadata")
    try:
        storage = FileSystemReader(ckpt_dir).read_metadata().storage_data
    except Exception as exc:  # an unpickling failure can be of many types
        return f"{index_path} is corrupt ({_first_line(exc)})"
    needed: Dict[str, int] = defaultdict(int)
    for info in storage.values():
        needed[info.relative_path] = max(needed[info.relative_path], info.offset + info.length)
    for name in sorted(needed):
        path = os.path.join(ckpt_dir, name)
        if not os.path.isfile(path):
            return f"checkpoint {ckpt_dir} is incomplete: {name} is missing"
        size = os.path.getsize(path)
        if size < needed[name]:
            return f"{path} is truncated: {size} bytes, its index ({index_path}) needs {needed[name]}"
    return None


def holds_key_prefix(ckpt_dir: str, prefix: str) -> Optional[bool]:
    """Whether some tensor stored in ``ckpt_dir`` has a key starting with ``prefix`` (None: the
    index cannot be read)."""
    try:
        keys = FileSystemReader(ckpt_dir).read_metadata().state_dict_metadata
    except Exception:  # missing or unreadable: reported when the checkpoint is loaded
        return None
    return any(key.startswith(prefix) for key in keys)


def load_failure_reason(ckpt_dir: str, exc: BaseException) -> str:
    """One line saying why loading ``ckpt_dir`` failed with ``exc``.

    A data file whose records were overwritten (zeroed, or another file in its place) is named
    with the first damaged record; otherwise the innermost error's first line is given.
    """
    damaged = first_damaged_record(ckpt_dir)
    if damaged is not None:
        return damaged
    return f"cannot load checkpoint {ckpt_dir}: {_first_line(innermost_error(exc))}"


def first_damaged_record(ckpt_dir: str) -> Optional[str]:
    """The first ``.distcp`` record that does not start as a ``torch.save`` record, or None."""
    try:
        storage = FileSystemReader(ckpt_dir).read_metadata().storage_data
    except Exception:  # reported by missing_or_truncated
        return None
    by_file = defaultdict(list)
    for index, info in storage.items():
        by_file[info.relative_path].append((info.offset, index.fqn))
    for name in sorted(by_file):
        path = os.path.join(ckpt_dir, name)
        try:
            with open(path, "rb") as f:
                for offset, key in sorted(by_file[name]):
                    f.seek(offset)
                    if f.read(len(_RECORD_MAGIC)) != _RECORD_MAGIC:
                        return f"{path} is corrupt: the record of {key} at byte {offset} is not a tensor record"
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
    return None


def write_failure_reason(exc: BaseException, directory: str) -> str:
    """Why writing into ``directory`` failed: the OS's reason when one is known.

    torch.save reports a failed write of ``common.pt`` without the OS error (``inline_container.cc
    ... unexpected pos``); then a probe write into ``directory`` finds it (disk full, quota,
    read-only file system, file size limit).
    """
    os_error = _os_error(exc)
    if os_error is not None:
        return os_error.strerror or _first_line(os_error)
    probe = _probe_write(directory)
    return probe if probe is not None else _first_line(innermost_error(exc))


def innermost_error(exc: BaseException) -> BaseException:
    """The root cause: through ``__cause__``/``__context__`` and torch's per-rank CheckpointException."""
    return list(_chain(exc))[-1]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        if isinstance(exc, CheckpointException) and exc.failures:
            # {rank: (exception, traceback summary)}; the lowest failing rank's exception.
            exc = exc.failures[min(exc.failures)][0]
        else:
            exc = exc.__cause__ or exc.__context__


def _os_error(exc: BaseException) -> Optional[OSError]:
    return next((e for e in _chain(exc) if isinstance(e, OSError) and e.errno), None)


def _probe_write(directory: str) -> Optional[str]:
    """The OS error of writing and syncing 1 MiB into ``directory`` (None if that works)."""
    path = os.path.join(directory, f".write_probe_{uuid.uuid4().hex}")
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return None
    except OSError as exc:
        return exc.strerror or _first_line(exc)
    finally:
        if os.path.exists(path):
            os.remove(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__
