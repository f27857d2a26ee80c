"""Start-up checks: output paths a run cannot use and activations that cannot fit are refused
with one line before anything is built."""

import errno
import re

import pytest

from megatron_evomoe.training import startup_checks
from tests.tiny import tiny_run

GIB = 1024**3


def test_a_sequence_length_whose_activations_cannot_fit_is_refused_with_the_estimate():
    run = tiny_run("--seq-length", "100000")
    with pytest.raises(ValueError) as error:
        startup_checks.check_activation_memory(run, available=24 * GIB)
    text = str(error.value)
    match = re.fullmatch(r"--seq-length 100000 with --micro-batch-size 2 needs an estimated ([\d,.]+) GiB of "
                         r"activations per rank, more than the 24\.0 GiB this rank has: .*--dry-run.*", text)
    assert match, text
    # Hand oracle: without a fused kernel every layer keeps its attention scores, 5 a s^2 b bytes at
    # 16 bits (Korthikanti et al.), twice that in fp32: 4 layers x 5 x 4 heads x 1e10 x 2 x 2 bytes.
    scores = 4 * 5 * 4 * 100_000**2 * 2 * 2 / GIB
    assert scores <= float(match.group(1).replace(",", "")) <= 1.01 * scores  # the rest is O(s h), negligible


def test_an_ordinary_configuration_fits():
    startup_checks.check_activation_memory(tiny_run())  # this machine's memory
    startup_checks.check_activation_memory(tiny_run("--seq-length", "1024"), available=1 * GIB)


def test_a_read_only_save_directory_is_refused_before_training(tmp_path, monkeypatch):
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    monkeypatch.setattr(startup_checks, "open", read_only, raising=False)  # root ignores chmod
    with pytest.raises(ValueError, match=f"^--save {re.escape(str(tmp_path))} is not writable "
                                         r"\(Read-only file system\)$"):
        startup_checks.writable_directory(str(tmp_path), "--save")
    assert list(tmp_path.iterdir()) == []  # no probe left behind


def test_missing_parents_of_save_are_created_as_in_megatron_lm(tmp_path):
    target = tmp_path / "runs" / "a" / "ckpt"
    startup_checks.writable_directory(str(target), "--save")
    assert target.is_dir() and list(target.iterdir()) == []


def test_load_that_is_a_file_is_refused(tmp_path):
    file = tmp_path / "ckpt"
    file.write_text("")
    with pytest.raises(ValueError, match=f"^--load {re.escape(str(file))} is a file, not a checkpoint directory$"):
        startup_checks.check_output_paths(tiny_run("--load", str(file)).training)
