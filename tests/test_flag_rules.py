"""flag_rules.py: the required flags, --train-samples and --lr-warmup-fraction against hand-computed
values (Megatron-LM's rules, written out)."""

import argparse

import pytest

from megatron_evomoe.errors import InputError
from megatron_evomoe.flag_rules import missing_required_flags, train_iters_from_samples, warmup_iters


def test_missing_flags_are_listed_in_megatron_lms_order():
    everything = argparse.Namespace(num_layers=2, hidden_size=8, num_attention_heads=2, seq_length=4,
                                    micro_batch_size=1, train_iters=1, train_samples=None, lr=0.1)
    assert missing_required_flags(everything) == []
    nothing = argparse.Namespace()
    assert missing_required_flags(nothing) == [
        "--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--micro-batch-size",
        "--train-iters or --train-samples", "--lr",
    ]
    assert missing_required_flags(nothing, train_length=False)[-2:] == ["--micro-batch-size", "--lr"]
    by_samples = argparse.Namespace(**{**vars(everything), "train_iters": None, "train_samples": 64})
    assert missing_required_flags(by_samples) == []


def test_train_samples_are_whole_global_batches():
    assert train_iters_from_samples(1000, 16) == 62  # 62 x 16 = 992; the last 8 samples are dropped
    assert train_iters_from_samples(64, 16) == 4
    with pytest.raises(InputError, match="--train-samples 15 is less than one global batch"):
        train_iters_from_samples(15, 16)


def test_warmup_fraction_of_the_decay_iterations():
    assert warmup_iters(7, None, 1000) == 7
    assert warmup_iters(0, 0.01, 1000) == 10
    assert warmup_iters(0, 0.06, 18) == 1  # int(1.08)
    with pytest.raises(InputError, match=r"--lr-warmup-fraction must be in \[0, 1\)"):
        warmup_iters(0, 1.0, 10)
