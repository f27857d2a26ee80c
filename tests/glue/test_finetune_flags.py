"""finetune_glue.py's flag handling: checkpoint model flags as defaults, the epoch schedule, the
vocabulary of a checkpoint, and one clear error (exit 2) for bad input -- all before any training."""

import argparse
import os
import sys

import pytest

from megatron_evomoe.arguments import build_parser
from megatron_evomoe.bert_arguments import add_bert_args, finetune_config_from_args
from megatron_evomoe.data.glue.tasks import get_task
from megatron_evomoe.flag_rules import warmup_iters
from megatron_evomoe.training import finetune_entry
from megatron_evomoe.training.model_args import model_flag_names, read_model_args, save_model_args
from tests.distributed import run_ranks
from tests.glue.tsv_fixtures import write_task
from tests.training.checkpoint_ranks import train


@pytest.fixture
def checkpoint(tmp_path):
    """A directory with the model_args.json of a 6-layer BPE model pretrained with TP=2."""
    parser = build_parser("", add_bert_args)
    args = parser.parse_args(["--num-layers", "6", "--num-experts", "8", "--moe-router-type", "dts", "--bf16",
                              "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", "tok/vocab.json"])
    save_model_args(str(tmp_path / "ckpt"), vars(args), parser, "evomoe", padded_vocab_size=512)
    return str(tmp_path / "ckpt")


def _argv(checkpoint, data_dir, *extra):
    return ["--task", "RTE", "--data-dir", data_dir, "--pretrained-checkpoint", checkpoint, *extra]


def test_model_flags_come_from_the_checkpoint(checkpoint, tmp_path):
    record = read_model_args(checkpoint)
    assert record["padded_vocab_size"] == 512 and record["model_name"] == "evomoe" and record["task"] is None
    assert record["flags"]["vocab_file"] == os.path.abspath("tok/vocab.json")
    names = model_flag_names(build_parser("", add_bert_args))
    assert {"num_layers", "num_experts", "moe_router_type", "bert_binary_head", "tokenizer_type"} <= set(names)
    assert not {"bf16", "lr", "seed", "tensor_model_parallel_size"} & set(names)

    args, _, _ = finetune_entry.parse_finetune_args(_argv(checkpoint, str(tmp_path), "--num-experts", "4"), "")
    assert (args.num_layers, args.moe_router_type, args.num_experts) == (6, "dts", 4)  # the command line wins
    assert not args.bf16 and args.lr == 2e-5 and args.adam_beta2 == 0.98  # RoBERTa's fine-tuning defaults


def test_schedule_from_epochs_and_vocabulary_from_checkpoint(checkpoint, tmp_path):
    args, record, _ = finetune_entry.parse_finetune_args(_argv(checkpoint, str(tmp_path), "--epochs", "3"), "")
    config = finetune_config_from_args(args)
    args.global_batch_size = 16
    finetune_entry.set_schedule(args, config, num_train=100, world_size=1)
    assert (args.train_iters, args.lr_warmup_fraction) == (18, 0.06)  # 3 x (100 // 16); RoBERTa's 6% warm-up
    assert warmup_iters(args.lr_warmup_iters, args.lr_warmup_fraction, args.train_iters) == 1  # int(1.08)
    explicit, _, _ = finetune_entry.parse_finetune_args(_argv(checkpoint, str(tmp_path), "--lr-warmup-iters", "5"), "")
    finetune_entry.set_schedule(explicit, config, num_train=100, world_size=1)
    assert (explicit.lr_warmup_iters, explicit.lr_warmup_fraction) == (5, None)  # the flag, not the 6%
    with pytest.raises(ValueError, match="takes its length from --epochs: --train-iters is not used"):
        finetune_entry.set_schedule(argparse.Namespace(**{**vars(args), "train_iters": 9}), config, 100, 1)
    tokenizer = argparse.Namespace(vocab_size=300)
    assert finetune_entry.vocabulary_size(args, tokenizer, record) == 512  # not re-padded for this TP size
    with pytest.raises(ValueError, match="does not fit this tokenizer"):
        finetune_entry.vocabulary_size(args, argparse.Namespace(vocab_size=600), record)


def test_flag_combinations(checkpoint, tmp_path):
    def config(*extra):
        return finetune_config_from_args(finetune_entry.parse_finetune_args(
            ["--task", "RTE", "--data-dir", str(tmp_path), *extra], "")[0])

    with pytest.raises(ValueError, match="not both"):
        config("--pretrained-checkpoint", checkpoint, "--load", checkpoint)
    with pytest.raises(ValueError, match="--epochs 0 only evaluates"):
        config("--pretrained-checkpoint", checkpoint, "--epochs", "0")
    args = argparse.Namespace(load=checkpoint)
    with pytest.raises(ValueError, match="is a pretraining checkpoint.*use --pretrained-checkpoint"):
        finetune_entry.check_load_source(get_task("RTE"), read_model_args(checkpoint), args)


def test_bad_tsv_is_one_error_line_and_exit_2(checkpoint, tmp_path, capsys):
    write_task("RTE", str(tmp_path), [("a", "b", "entailment"), ("c", "d", "maybe")], [("a", "b", "entailment")],
               [("a", "b", None)])
    with pytest.raises(SystemExit) as exit_info:
        finetune_entry.main(_argv(checkpoint, str(tmp_path)))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and "train.tsv:3: label 'maybe'" in err


def _main_error(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        finetune_entry.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def test_missing_empty_or_gpt_checkpoint_is_named(tmp_path, capsys):
    missing = str(tmp_path / "missing")
    assert _main_error(_argv(missing, str(tmp_path)), capsys) == (
        f"error: --pretrained-checkpoint {missing}: no such checkpoint directory\n"
    )
    assert _main_error(["--task", "RTE", "--data-dir", str(tmp_path), "--load", str(tmp_path)], capsys) == (
        f"error: --load {tmp_path} holds no checkpoint (latest_checkpointed_iteration.txt is missing)\n"
    )
    gpt = str(tmp_path / "gpt")
    run_ranks(train, 1, ["--save", gpt, "--train-iters", "1", "--eval-interval", "100"])  # pretrain_gpt_moe.py's kind
    assert _main_error(_argv(gpt, str(tmp_path)), capsys) == (
        f"error: --pretrained-checkpoint {gpt} is not a BERT checkpoint ({gpt}/iter_0000001 has no masked-LM head; "
        "a GPT checkpoint?): fine-tune from a pretrain_bert_moe.py or finetune_glue.py --save directory\n"
    )


def test_unknown_task_is_one_line_with_a_hint(tmp_path, capsys):
    sys.argv[0] = "finetune_glue.py"
    err = _main_error(["--task", "MRPCX", "--data-dir", str(tmp_path)], capsys)
    assert err.count("\n") == 1 and err.startswith("finetune_glue.py: error: argument --task: invalid choice: 'MRPCX'")
    assert err.endswith("(see finetune_glue.py --help)\n")


@pytest.mark.parametrize("flag", [["--exit-duration-in-mins", "5"], ["--exit-interval", "2"], ["--exit-signal-handler"],
                                  ["--moe-per-layer-logging"]])
def test_pretraining_flags_fine_tuning_ignores_are_refused(checkpoint, flag):
    args, _, _ = finetune_entry.parse_finetune_args(_argv(checkpoint, "x", *flag), "")
    with pytest.raises(ValueError, match=f"finetune_glue.py does not support {flag[0]} "):
        finetune_entry.check_unsupported_flags(args)
    finetune_entry.check_unsupported_flags(finetune_entry.parse_finetune_args(_argv(checkpoint, "x"), "")[0])
