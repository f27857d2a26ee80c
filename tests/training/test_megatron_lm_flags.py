"""A Megatron-LM user's flags: required ones name themselves when missing, renamed ones keep their old
name as an alias, and the flags Megatron-LM has for run length, warm-up, time limit, MoE placement,
top-k and per-layer logging mean what they mean there."""

import importlib.util
import os
from types import SimpleNamespace

import pytest

from megatron_evomoe.arguments import build_parser, parse_args
from megatron_evomoe.bert_arguments import add_bert_args
from megatron_evomoe.flag_rules import REQUIRED_FLAGS
from megatron_evomoe.models.layer_specs import moe_layer_pattern
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.dry_run import print_dry_run
from megatron_evomoe.training.entry import main as entry_main
from megatron_evomoe.training.exit_duration import ExitDuration, duration_exceeded
from megatron_evomoe.training.model_args import flag_defaults
from megatron_evomoe.training.routing_metrics import StepRouting
from tests.tiny import REQUIRED, VOCAB, tiny_args, tiny_gpt_task, tiny_run

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _without(flags, *names):
    """``flags`` with the flags ``names`` and their values removed."""
    out, skip = [], False
    for item in flags:
        if skip:
            skip = False
        elif item in names:
            skip = True
        else:
            out.append(item)
    return out


def _entry_error(argv, capsys, **kwargs):
    with pytest.raises(SystemExit) as exit_info:
        entry_main(lambda run, tokenizer: tiny_gpt_task(), "test", argv,
                   tokenizer_provider=lambda args: SimpleNamespace(vocab_size=VOCAB), **kwargs)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


# ------------------------------------------------------------------------------ required flags
REQUIRED_NAMES = ["--num-layers", "--hidden-size", "--num-attention-heads", "--seq-length", "--micro-batch-size",
                  "--train-iters", "--lr"]


@pytest.mark.parametrize("flag", REQUIRED_NAMES)
def test_each_missing_required_flag_is_named(flag, capsys):
    err = _entry_error(_without(tiny_args(), flag), capsys)
    named = "--train-iters or --train-samples" if flag == "--train-iters" else flag
    assert err.startswith(f"error: missing required flag: {named} (no defaults")


def test_all_missing_flags_in_one_line(capsys):
    err = _entry_error(["--num-experts", "4"], capsys)
    assert err.startswith(
        "error: missing required flags: --num-layers, --hidden-size, --num-attention-heads, --seq-length, "
        "--micro-batch-size, --train-iters or --train-samples, --lr (no defaults"
    )
    assert len(REQUIRED_FLAGS) + 1 == len(REQUIRED_NAMES)


def test_bert_script_names_them_too(capsys):
    spec = importlib.util.spec_from_file_location("pretrain_bert_moe", os.path.join(REPO, "pretrain_bert_moe.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.cli(_without(REQUIRED, "--lr", "--seq-length"))
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: missing required flags: --seq-length, --lr (")


# -------------------------------------------------------------------------------------- aliases
def test_norm_epsilon_and_its_old_name():
    new = parse_args(tiny_args("--norm-epsilon", "1e-6"))
    old = parse_args(tiny_args("--layernorm-epsilon", "1e-6"))
    assert new.norm_epsilon == old.norm_epsilon == 1e-6
    assert build_run_config(old, VOCAB, 1).model.layernorm_epsilon == 1e-6
    assert parse_args(tiny_args()).norm_epsilon == 1e-5


def test_an_older_model_args_record_keeps_its_epsilon():
    """finetune_glue.py reads a checkpoint's flags: one saved under the old name still applies."""
    defaults = flag_defaults({"flags": {"layernorm_epsilon": 1e-6, "num_layers": 6}}, build_parser("", add_bert_args))
    assert defaults == {"norm_epsilon": 1e-6, "num_layers": 6}


def test_bert_binary_head_on_by_default_as_in_megatron_lm():
    def head(*flags):
        return build_run_config(parse_args(tiny_args(*flags), "", add_bert_args), VOCAB, 1).bert.binary_head

    assert head() is True
    assert head("--bert-no-binary-head") is False
    assert head("--bert-binary-head") is True  # the old flag: same value as the default, explicitly


# ----------------------------------------------------------------------------- --moe-layer-freq
@pytest.mark.parametrize(
    "value, pattern",
    [
        ("1", [True] * 4),
        ("2", [True, False, True, False]),  # Megatron-LM: layer i is MoE iff i % k == 0
        ("3", [True, False, False, True]),
        ("([0]+[1]*3)", [False, True, True, True]),
        ("[0,1,0,1]", [False, True, False, True]),
    ],
)
def test_moe_layer_freq_places_the_moe_layers(value, pattern):
    assert moe_layer_pattern(tiny_run("--moe-layer-freq", value).model) == pattern


def test_moe_layer_freq_default_is_the_papers_every_other_ffn():
    assert moe_layer_pattern(tiny_run().model) == [True, False, True, False]


def test_moe_layer_freq_bad_list(capsys):
    with pytest.raises(ValueError, match="--moe-layer-freq lists 3 layers, the model has --num-layers 4"):
        tiny_run("--moe-layer-freq", "[1,0,1]")
    err = _entry_error(tiny_args("--moe-layer-freq", "[1,2,1,0]"), capsys)
    assert err.startswith("error: --moe-layer-freq '[1,2,1,0]': a list must hold one 0 (dense) or 1 (MoE) per layer")


# ------------------------------------------------------------------------ length and warm-up
def test_train_samples_gives_whole_global_batches():
    run = build_run_config(parse_args(_without(tiny_args(), "--train-iters") + ["--train-samples", "18"]), VOCAB, 1)
    assert run.training.train_iters == 4  # 18 // global batch 4
    assert run.model.moe_router.schedule_meta() == {}  # switch: nothing else to resolve


def test_train_samples_and_iters_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(tiny_args("--train-samples", "16"))
    assert "argument --train-samples: not allowed with argument --train-iters" in capsys.readouterr().err


def test_warmup_fraction_for_pretraining():
    assert tiny_run("--train-iters", "200", "--lr-warmup-fraction", "0.1").training.lr_schedule.warmup_iters == 20
    decay = tiny_run("--train-iters", "200", "--lr-decay-iters", "100", "--lr-warmup-fraction", "0.1")
    assert decay.training.lr_schedule.warmup_iters == 10  # Megatron-LM: of --lr-decay-iters


def test_warmup_fraction_and_iters_together_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_args(tiny_args("--lr-warmup-fraction", "0.1", "--lr-warmup-iters", "3"))
    assert "argument --lr-warmup-iters: not allowed with argument --lr-warmup-fraction" in capsys.readouterr().err


# --------------------------------------------------------------------- --exit-duration-in-mins
def test_exit_duration_decision():
    assert not duration_exceeded(start=100.0, now=160.0, minutes=1.0)
    assert duration_exceeded(start=100.0, now=160.5, minutes=1.0)
    clock = iter([0.0, 30.0, 90.0])
    limit = ExitDuration(1.0, clock=lambda: next(clock))
    assert not limit.exceeded_on_any_rank()  # 30 s
    assert limit.exceeded_on_any_rank()  # 90 s


def test_exit_duration_stops_and_saves(train_in_process, tmp_path):
    ckpt = tmp_path / "ckpt"
    records = train_in_process("--exit-duration-in-mins", "1e-6", "--save", str(ckpt), "--train-iters", "4")
    assert [r["iteration"] for r in records] == [1]  # stopped after the first step
    assert (ckpt / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


def test_exit_duration_must_be_positive():
    with pytest.raises(ValueError, match="--exit-duration-in-mins must be > 0"):
        tiny_run("--exit-duration-in-mins", "0")


# ------------------------------------------------------------------------------- top-k per router
@pytest.mark.parametrize(
    "router, topk, reason",
    [
        ("switch", "2", "Switch is top-1 by definition"),
        ("gshard", "1", "GShard is top-2 by definition"),
        ("base", "2", "BASE layers assign each token to exactly one expert"),
        ("hash", "2", "a hash layer maps each token id to one expert"),
        ("stablemoe", "2", "StableMoE routes each token to one expert"),
        ("dts", "2", "the DTS gate anneals to Top-1 by definition"),
    ],
)
def test_a_fixed_k_router_says_why_it_refuses_another_k(router, topk, reason):
    with pytest.raises(ValueError, match=f"^--moe-router-topk {topk}: this router takes k = .* only: {reason}"):
        tiny_run("--moe-router-type", router, "--moe-router-topk", topk)


def test_a_router_with_a_k_honours_it():
    assert tiny_run("--moe-router-type", "dselectk", "--moe-router-topk", "3").model.moe_router_topk == 3


# ------------------------------------------------------------------------ --moe-per-layer-logging
def test_loss_entries_mean_and_per_layer():
    routing = StepRouting(num_tokens=[8.0, 8.0], losses={"balance": [0.2, 0.6]})  # two steps' sums
    assert routing.loss_entries(steps=2) == {"balance_loss": pytest.approx(0.2)}  # (0.1 + 0.3) / 2 layers
    per_layer = routing.loss_entries(steps=2, per_layer=True)
    assert per_layer["balance_loss_per_layer"] == pytest.approx([0.1, 0.3])


def test_per_layer_logging_in_a_run(train_in_process):
    plain = train_in_process("--train-iters", "1")[-1]
    logged = train_in_process("--train-iters", "1", "--moe-per-layer-logging")[-1]
    assert "balance_loss_per_layer" not in plain and isinstance(plain["balance_loss"], float)
    layers = logged["balance_loss_per_layer"]
    assert len(layers) == 2 and logged["balance_loss"] == pytest.approx(sum(layers) / 2)


# ------------------------------------------------------------------------------------ --dry-run
def test_dry_run_checks_the_data_paths(tmp_path, capsys):
    missing = str(tmp_path / "corpus_text_document")
    err = _entry_error(tiny_args("--dry-run", "--data-path", missing), capsys, dry_run=print_dry_run)
    assert err == f"error: data prefix {missing!r} (--data-path): missing {missing}.bin\n"
    (tmp_path / "corpus_text_document.bin").write_bytes(b"")
    err = _entry_error(tiny_args("--dry-run", "--train-data-path", missing), capsys, dry_run=print_dry_run)
    assert err == f"error: data prefix {missing!r} (--train-data-path): missing {missing}.idx\n"


def test_dry_run_checks_the_tokenizer_files(tmp_path, capsys):
    vocab = tmp_path / "vocab.json"
    vocab.write_text("{}")
    with pytest.raises(SystemExit):
        entry_main(lambda run, tokenizer: tiny_gpt_task(), "test",
                   tiny_args("--dry-run", "--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", str(vocab),
                             "--merge-file", str(tmp_path / "merges.txt")), dry_run=print_dry_run)
    assert capsys.readouterr().err == f"error: --merge-file {str(tmp_path / 'merges.txt')!r}: no such file\n"
