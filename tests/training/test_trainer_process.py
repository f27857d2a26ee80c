"""The trainer as a process (``tests/training/tiny_trainer.py``, i.e. ``training.entry.main``):
a SIGKILL leaves no process behind, SIGTERM with --exit-signal-handler saves and exits 0, a save
that cannot be written is one line and keeps the previous checkpoint, bad output paths stop it
before training."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

from megatron_evomoe.analysis.local_world import free_port
from megatron_evomoe.training.checkpointing import TRACKER_FILE, checkpoint_dir, read_tracker
from tests.training import tiny_trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Trainer:
    """One trainer process in a session of its own, its stdout read as ``... | cat`` would."""

    def __init__(self, flags, cwd, env=None, preexec_fn=None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.training.tiny_trainer", *flags], cwd=cwd,
            env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", **(env or {})},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            preexec_fn=preexec_fn,
        )
        self.lines: list[str] = []
        self.eof = threading.Event()  # every holder of the pipe's write end is gone
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
        self.eof.set()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None, f"trainer exited ({self.proc.returncode}):\n" + "\n".join(self.lines)
            assert time.time() < deadline, f"no {text!r} after {timeout} s:\n" + "\n".join(self.lines)
            time.sleep(0.05)

    def session_processes(self) -> list[str]:
        """Live processes of this trainer's session (its descendants, re-parented or not)."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                stat = open(f"/proc/{pid}/stat").read()
            except OSError:
                continue
            state, _ppid, _pgrp, session = stat.rsplit(")", 1)[1].split()[:4]
            if int(session) == self.proc.pid and state != "Z":
                found.append(f"{pid} {open(f'/proc/{pid}/cmdline').read().replace(chr(0), ' ')[:120]}")
        return found

    def finish(self, timeout: float = 300) -> int:
        returncode = self.proc.wait(timeout)
        assert self.eof.wait(10)
        return returncode


def _flags(*extra):
    return ["--eval-interval", "1000", "--log-interval", "1", *extra]


def test_sigkill_leaves_no_process_behind_one_rank_or_all(tmp_path):
    port = free_port()
    env = dict(WORLD_SIZE="2", LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    flags = _flags("--train-iters", "100000", "--save", str(tmp_path / "ckpt"), "--save-interval", "2",
                   "--num-workers", "1")
    ranks = [Trainer(flags, tmp_path, {**env, "RANK": str(r), "LOCAL_RANK": str(r)}) for r in range(2)]
    try:
        ranks[0].wait_for("saved checkpoint")  # every rank has written its part (the save ends in a barrier)
        ranks[0].wait_for(f"iter {3:>6}")
        for rank in ranks:
            assert len(rank.session_processes()) >= 2  # the trainer and its DataLoader worker: the oracle sees them
        for rank in (ranks[1], ranks[0]):  # one rank alone first (the other keeps running), then the last one
            os.kill(rank.proc.pid, signal.SIGKILL)
            assert rank.eof.wait(10), "a child process kept the trainer's stdout open"
            deadline = time.time() + 5
            while rank.session_processes() and time.time() < deadline:
                time.sleep(0.1)
            assert rank.session_processes() == []
    finally:
        for rank in ranks:
            for line in rank.session_processes():
                os.kill(int(line.split()[0]), signal.SIGKILL)


def test_sigterm_saves_at_the_step_boundary_and_exits_zero(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    trainer = Trainer(_flags("--train-iters", "100000", "--save", ckpt, "--exit-signal-handler"), tmp_path)
    trainer.wait_for(f"iter {2:>6}")
    os.kill(trainer.proc.pid, signal.SIGTERM)
    assert trainer.finish() == 0, "\n".join(trainer.lines)
    stop = read_tracker(ckpt)
    assert trainer.lines[-2:] == [f"saved checkpoint {checkpoint_dir(ckpt, stop)}",
                                  f"exiting at iteration {stop}: SIGTERM received (--exit-signal-handler)"]
    assert f"iter {stop:>6}/100000" in trainer.lines[-3]  # the step in flight was finished, not cut
    assert trainer.session_processes() == []


def _limit_file_size(limit):
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes beyond it fail with EFBIG

    return apply


def test_a_save_that_cannot_be_written_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    ckpt = str(tmp_path / "ckpt")
    first = Trainer(_flags("--train-iters", "4", "--exit-interval", "2", "--save", ckpt), tmp_path)
    assert first.finish() == 0, "\n".join(first.lines)
    good = sorted(os.listdir(checkpoint_dir(ckpt, 2)))
    # The same disk, now unable to hold a .distcp data file (~500 kB; written by megatron's writer
    # process): a full disk or a quota fails the same way.
    resumed = Trainer(_flags("--train-iters", "4", "--save", ckpt, "--load", ckpt), tmp_path,
                      preexec_fn=_limit_file_size(200_000))
    assert resumed.finish() == 2
    assert resumed.lines.pop() == f"error: cannot write checkpoint {checkpoint_dir(ckpt, 4)}: File too large"
    # Nothing else was printed about it: no traceback, no writer-process log line.
    assert not any(word in line for line in resumed.lines for word in ("Traceback", "rror", "Errno"))
    assert sorted(os.listdir(ckpt)) == sorted([TRACKER_FILE, "iter_0000002"])  # no iter_0000004.tmp left behind
    assert read_tracker(ckpt) == 2 and sorted(os.listdir(checkpoint_dir(ckpt, 2))) == good


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--save", "{file}"], "error: --save {file} is a file, not a directory"),
        (["--save", "{file}/ckpt"], "error: --save {file}/ckpt: cannot create the directory (Not a directory)"),
        (["--log-json", "{dir}"], "error: --log-json {dir} is a directory; give a file path"),
        (["--tensorboard-dir", "{file}"], "error: --tensorboard-dir {file} is a file, not a directory"),
        (["--moe-router-type", "nope"], "tiny_trainer.py: error: argument --moe-router-type: invalid choice: 'nope' "
                                        "(choose from 'switch', 'gshard', 'base', 'hash', 'stablemoe', 'dselectk', "
                                        "'dts') (see tiny_trainer.py --help)"),
    ],
)
def test_unusable_output_paths_and_unknown_choices_stop_before_training(tmp_path, flags, message, capsys):
    file = tmp_path / "a_file"
    file.write_text("x")
    fill = dict(file=str(file), dir=str(tmp_path))
    sys.argv[0] = "tiny_trainer.py"
    with pytest.raises(SystemExit) as exit_info:
        tiny_trainer.main(_flags(*(f.format(**fill) for f in flags)))
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", message.format(**fill) + "\n")  # no usage block, no traceback, nothing trained
