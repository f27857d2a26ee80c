"""Invalid flag combinations end in one clear error naming the flags."""

import pytest

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.run_config import build_run_config
from tests.tiny import VOCAB, tiny_args


def _config(*flags, world_size=1):
    return build_run_config(parse_args(tiny_args(*flags)), VOCAB, world_size)


@pytest.mark.parametrize(
    "flags, world_size, message",
    [
        (["--tensor-model-parallel-size", "3", "--sequence-parallel"], 3, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3"),
        (["--expert-model-parallel-size", "3"], 3, "--num-experts 4 is not divisible by --expert-model-parallel-size 3"),
        (["--pipeline-model-parallel-size", "3"], 3, "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3"),
        (["--global-batch-size", "6"], 4, "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 4"),
        (["--tensor-model-parallel-size", "2"], 3, "world size 3 is not divisible by --tensor-model-parallel-size 2"),
        (["--tensor-model-parallel-size", "2"], 2, "needs --sequence-parallel"),
        (["--bf16", "--fp16"], 1, "mutually exclusive"),
        (["--moe-router-topk", "5"], 1, "--moe-router-topk 5 must be in"),
        (["--save-interval", "5"], 1, "--save-interval needs --save"),
        (["--evomoe-mask-ratio", "1.5"], 1, "--evomoe-mask-ratio must be in"),
        (["--moe-router-type", "dts", "--evomoe-shared-expert-iters", "10", "--dts-top1-iter", "5"], 1, "--dts-top1-iter 5 is before"),
        (["--seq-length", "64", "--max-position-embeddings", "32"], 1, "--max-position-embeddings 32 < --seq-length 64"),
    ],
)
def test_invalid_combination_is_named(flags, world_size, message):
    with pytest.raises(ValueError, match=message.replace("+", r"\+")):
        _config(*flags, world_size=world_size)


def test_valid_layout_and_batch_arithmetic():
    run = _config("--tensor-model-parallel-size", "2", "--sequence-parallel", "--expert-model-parallel-size", "2",
                  "--global-batch-size", "8", world_size=4)
    assert run.data_parallel_size == 2
    assert run.num_microbatches == 2  # 8 / (2 x 2)
    assert run.model.sequence_parallel and run.model.num_moe_experts == 4
    assert run.model.moe_router.aux_loss_coeff == 0.01  # switch default


def test_router_default_coefficients():
    assert _config("--moe-router-type", "dts").model.moe_router.aux_loss_coeff == 0.1
    assert _config("--moe-router-type", "dts", "--moe-aux-loss-coeff", "0.3").model.moe_router.aux_loss_coeff == 0.3


@pytest.mark.parametrize(
    "flags, message",
    [
        # Zeros that used to end in a ZeroDivisionError (or megatron's asserts) deep inside.
        (["--micro-batch-size", "0"], "--micro-batch-size must be >= 1, got 0"),
        (["--hidden-size", "0"], "--hidden-size must be >= 1, got 0"),
        (["--num-layers", "0"], "--num-layers must be >= 1, got 0"),
        (["--num-attention-heads", "0"], "--num-attention-heads must be >= 1, got 0"),
        (["--min-lr", "0.1"], "--min-lr 0.1 is larger than --lr 0.01"),
        (["--init-method-std", "-0.02"], "--init-method-std must be >= 0, got -0.02"),
        # Values that used to be accepted silently.
        (["--lr-warmup-iters", "-5"], "--lr-warmup-iters must be >= 0, got -5"),
        (["--clip-grad", "-1"], "--clip-grad must be >= 0, got -1.0"),
        (["--exit-interval", "-2"], "--exit-interval must be >= 1, got -2"),
        (["--save", "x", "--save-interval", "0"], "--save-interval must be >= 1, got 0"),
        (["--save", "x", "--save-interval", "-10"], "--save-interval must be >= 1, got -10"),
        (["--lr", "0"], r"--lr must be > 0, got 0.0 \(nothing would train\)"),
        (["--max-skipped-iters", "0"], "--max-skipped-iters must be >= 1"),
        (["--hidden-size", "30"], "--hidden-size 30 is not divisible by --num-attention-heads 4"),
        (["--exit-signal-handler"], "--exit-signal-handler needs --save DIR"),
    ],
)
def test_flag_values_that_would_crash_or_do_nothing_are_named(flags, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        _config(*flags)
