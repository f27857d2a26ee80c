"""Running the comparison's training jobs, resumably.

Each (row, seed) is one ``pretrain_gpt_moe.py`` process with its own directory::

    OUTPUT_DIR/runs/<variant>/seed<k>/  run.json (its flags, wall time per attempt), log.jsonl,
                                        stdout.log, ckpt/ (deleted once the run is complete)

and a row of a ``--sweep`` grid in ``runs/<variant>/<flag>=<value>,.../seed<k>/``.

Before launching, :func:`run_status` decides from what is on disk: a run whose log ends with the
final iteration's evaluation is *complete* and never rerun; one with a checkpoint is *resumed*
from it (``--load``; the log reader rewinds the records the interrupted attempt wrote after that
checkpoint); one with neither, or whose recorded flags differ from the current ones, *restarts* from
scratch. So a comparison killed at any point continues where it stopped when run again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Callable, List, Optional, Sequence

from megatron_evomoe.analysis.run_log import is_complete, read_records, truncate_partial_line

# training/checkpointing.py's TRACKER_FILE (not imported: that module loads megatron-core).
CHECKPOINT_TRACKER = "latest_checkpointed_iteration.txt"


class RunStatus(Enum):
    COMPLETE = "complete"
    RESUME = "resume from checkpoint"
    RESTART = "restart"
    NEW = "new"


@dataclass
class RunSpec:
    """One training job of the comparison.

    Attributes:
        variant: row name.
        seed: ``--seed``.
        run_dir: its directory.
        flags: pretrain_gpt_moe.py flags, without the per-run paths (log, checkpoints) and ``--load``.
        train_iters: iterations of a complete run.
        tokens_per_iteration: training tokens per iteration (global batch x sequence length).
    """

    variant: str
    """Row name: the variant, with its grid point when swept (``evomoe[num-experts=8]``)."""
    seed: int
    run_dir: str
    flags: List[str]
    train_iters: int
    wall_seconds: List[float] = field(default_factory=list)
    tokens_per_iteration: int = 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.run_dir, "log.jsonl")

    @property
    def ckpt_dir(self) -> str:
        return os.path.join(self.run_dir, "ckpt")

    @property
    def meta_path(self) -> str:
        return os.path.join(self.run_dir, "run.json")

    @property
    def stdout_path(self) -> str:
        return os.path.join(self.run_dir, "stdout.log")

    def argv(self, save_interval: int, resume: bool) -> List[str]:
        """The full command-line flags of one attempt."""
        argv = list(self.flags) + [
            "--log-json", self.log_path, "--save", self.ckpt_dir, "--save-interval", str(save_interval),
        ]
        return argv + (["--load", self.ckpt_dir] if resume else [])


def read_meta(spec: RunSpec) -> Optional[dict]:
    if not os.path.exists(spec.meta_path):
        return None
    with open(spec.meta_path) as handle:
        return json.load(handle)


def write_meta(spec: RunSpec, **extra) -> None:
    os.makedirs(spec.run_dir, exist_ok=True)
    tmp = spec.meta_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"variant": spec.variant, "seed": spec.seed, "flags": spec.flags,
                   "wall_seconds": spec.wall_seconds, **extra}, handle, indent=1)
    os.replace(tmp, spec.meta_path)


def has_checkpoint(spec: RunSpec) -> bool:
    return os.path.exists(os.path.join(spec.ckpt_dir, CHECKPOINT_TRACKER))


def run_status(spec: RunSpec) -> RunStatus:
    """What to do with ``spec`` given its directory (see the module docstring)."""
    meta = read_meta(spec)
    if meta is not None and meta.get("flags") != spec.flags:
        return RunStatus.RESTART  # same directory, different settings: old results do not apply
    if is_complete(read_records(spec.log_path), spec.train_iters):
        return RunStatus.COMPLETE
    if has_checkpoint(spec):
        return RunStatus.RESUME
    if meta is not None or os.path.exists(spec.log_path):
        return RunStatus.RESTART
    return RunStatus.NEW


Launcher = Callable[[List[str], str], int]
"""``(pretrain flags, stdout path) -> exit code``: runs one training attempt."""


def subprocess_launcher(script: str, prefix: Sequence[str] = ()) -> Launcher:
    """Run ``[*prefix or python] script flags`` with stdout and stderr in the run's stdout.log."""
    command = list(prefix) or [sys.executable]

    def launch(argv: List[str], stdout_path: str) -> int:
        with open(stdout_path, "a") as out:
            out.write("\n$ " + " ".join(command + [script] + argv) + "\n")
            out.flush()
            return subprocess.call(command + [script] + argv, stdout=out, stderr=subprocess.STDOUT)

    return launch


class RunFailed(RuntimeError):
    """A training process exited with an error or without completing."""


def execute(spec: RunSpec, launcher: Launcher, save_interval: int, keep_checkpoints: bool = False) -> RunStatus:
    """Bring ``spec`` to completion; returns the status it started from.

    A run restarted from scratch loses its log, checkpoints and recorded wall time first. Wall time
    accumulates over attempts (``run.json``). Once complete, checkpoints are deleted unless
    ``keep_checkpoints``.
    """
    status = run_status(spec)
    if status is RunStatus.COMPLETE:
        spec.wall_seconds = list((read_meta(spec) or {}).get("wall_seconds", []))
        return status
    if status is RunStatus.RESTART:
        for path in (spec.log_path, spec.stdout_path):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(spec.ckpt_dir, ignore_errors=True)
        spec.wall_seconds = []
    else:
        spec.wall_seconds = list((read_meta(spec) or {}).get("wall_seconds", []))
        truncate_partial_line(spec.log_path)  # the resumed process appends to this log
    write_meta(spec)
    start = time.perf_counter()
    code = launcher(spec.argv(save_interval, resume=status is RunStatus.RESUME), spec.stdout_path)
    spec.wall_seconds.append(time.perf_counter() - start)
    write_meta(spec)
    if code != 0:
        raise RunFailed(f"{spec.variant} seed {spec.seed} exited with code {code}; see {spec.stdout_path}")
    if not is_complete(read_records(spec.log_path), spec.train_iters):
        raise RunFailed(f"{spec.variant} seed {spec.seed} stopped before iteration {spec.train_iters}; "
                        f"see {spec.stdout_path}")
    if not keep_checkpoints:
        shutil.rmtree(spec.ckpt_dir, ignore_errors=True)
    return status
