"""The entry points turn only the project's input errors into one line; a bug keeps its traceback."""

from types import SimpleNamespace

import pytest

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.errors import InputError
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.entry import main
from tests.tiny import VOCAB, tiny_args


def _main(make_task, *flags):
    return main(make_task, "test", tiny_args(*flags), tokenizer_provider=lambda args: SimpleNamespace(vocab_size=VOCAB))


def test_an_input_error_is_one_line_and_exit_code_2(capsys):
    def make_task(run, tokenizer):
        raise InputError("--data-path x: missing x.bin")

    with pytest.raises(SystemExit) as exit_info:
        _main(make_task)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --data-path x: missing x.bin\n"


def test_any_other_value_error_is_a_bug_with_its_traceback():
    def make_task(run, tokenizer):
        raise ValueError("internal: shapes disagree")

    with pytest.raises(ValueError, match="internal: shapes disagree"):
        _main(make_task)


@pytest.mark.parametrize(
    "flags",
    [
        ["--micro-batch-size", "0"],  # flag_checks.py
        ["--moe-router-type", "dts", "--dts-threshold", "1"],  # a router's Config
        ["--moe-token-dispatcher-type", "alltoall", "--moe-ranks-per-node", "0"],  # the dispatcher options
        ["--expert-model-parallel-size", "2"],  # the parallel layout (a world of one)
        ["--exit-signal-handler"],
    ],
)
def test_flag_validation_raises_the_input_error_type(flags):
    with pytest.raises(InputError):
        build_run_config(parse_args(tiny_args(*flags)), VOCAB, 1)
