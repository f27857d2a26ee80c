"""Checkpoints: exact resume, resharding to another TP size, atomicity and clear errors."""

import json
import os
import re
import resource
import shutil
import tempfile

import pytest
import torch

from megatron_evomoe.training.checkpointing import TRACKER_FILE, CheckpointError, checkpoint_dir, read_tracker
from tests.distributed import run_ranks
from megatron_evomoe.training.loop import save, setup_session
from tests.tiny import tiny_gpt_task, tiny_run
from tests.training.checkpoint_ranks import load_and_evaluate, train, train_with_sigterm


def _losses(path):
    return [json.loads(line)["lm_loss"] for line in open(path) if '"lm_loss"' in line]


def _records(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def saved():
    """A 4-iteration run with checkpoints at 2 and 4, and its log."""
    root = tempfile.mkdtemp()
    log = os.path.join(root, "log.jsonl")
    run_ranks(train, 1, ["--save", os.path.join(root, "ckpt"), "--save-interval", "2", "--log-json", log,
                         "--eval-interval", "4"])
    return root, log


def test_thirty_straight_equals_twenty_then_resume(tmp_path):
    flags = ["--train-iters", "30", "--hidden-dropout", "0.1", "--eval-interval", "100"]
    straight, resumed, ckpt = tmp_path / "a.jsonl", tmp_path / "b.jsonl", str(tmp_path / "ckpt")
    run_ranks(train, 1, flags + ["--log-json", str(straight)])
    run_ranks(train, 1, flags + ["--log-json", str(resumed), "--save", ckpt, "--exit-interval", "20"])
    assert read_tracker(ckpt) == 20
    run_ranks(train, 1, flags + ["--log-json", str(resumed), "--save", ckpt, "--load", ckpt])
    assert len(_losses(straight)) == 30
    assert _losses(resumed) == _losses(straight)  # bitwise, dropout included
    first, last = _records(resumed)[19], _records(resumed)[20]
    assert (first["iteration"], last["iteration"]) == (20, 21)
    assert last["consumed_samples"] == 21 * 4


def test_sigterm_on_one_rank_stops_all_after_the_same_step_and_the_resume_is_bitwise_equal(tmp_path):
    flags = ["--train-iters", "10", "--hidden-dropout", "0.1", "--eval-interval", "100"]
    straight, resumed, ckpt = tmp_path / "a.jsonl", tmp_path / "b.jsonl", str(tmp_path / "ckpt")
    run_ranks(train, 2, flags + ["--log-json", str(straight)])
    # DP 2, global batch 4, micro-batch 2: rank 1 reads samples 4s+2 and 4s+3 in step s (0-based).
    signalled = flags + ["--log-json", str(resumed), "--save", ckpt, "--exit-signal-handler"]
    stopped_at = run_ranks(train_with_sigterm, 2, signalled, 4 * 5 + 2, timeout=300)
    assert stopped_at == [6, 6]  # step 5 finished on both ranks, then the save, then a normal return
    assert read_tracker(ckpt) == 6 and [r["iteration"] for r in _records(resumed)] == list(range(1, 7))
    run_ranks(train, 2, flags + ["--log-json", str(resumed), "--save", ckpt, "--load", ckpt])
    assert len(_losses(straight)) == 10
    assert _losses(resumed) == _losses(straight)  # bitwise, dropout included


def test_saved_under_tp2_resumes_under_tp1(tmp_path):
    ckpt, log2 = str(tmp_path / "ckpt"), str(tmp_path / "tp2.jsonl")
    tp2 = ["--tensor-model-parallel-size", "2", "--sequence-parallel"]
    run_ranks(train, 2, tp2 + ["--save", ckpt, "--save-interval", "2", "--log-json", log2])
    shutil.rmtree(checkpoint_dir(ckpt, 4))
    with open(os.path.join(ckpt, TRACKER_FILE), "w") as f:
        f.write("2")
    log1 = str(tmp_path / "tp1.jsonl")
    run_ranks(train, 1, ["--load", ckpt, "--log-json", log1])
    # Model, Adam moments and LR schedule were resharded: steps 3 and 4 repeat under TP=1.
    assert _losses(log1) == pytest.approx(_losses(log2)[2:], rel=1e-5)


def test_validation_loss_of_a_loaded_model_matches_the_run(saved):
    root, log = saved
    val_at_4 = [r["val_loss"] for r in _records(log) if "val_loss" in r][-1]
    assert run_ranks(load_and_evaluate, 1, ["--load", os.path.join(root, "ckpt")])[0] == pytest.approx(val_at_4)


def _copy(saved, tmp_path):
    root, _ = saved
    target = str(tmp_path / "ckpt")
    shutil.copytree(os.path.join(root, "ckpt"), target)
    return target


def _load_here(*flags):
    """setup_session with --load in this process (a world of one): raises what loading raises."""
    return setup_session(tiny_run(*flags), tiny_gpt_task())


def _damage(ckpt, damage):
    """Damage the checkpoint of iteration 4 as a crash, a full disk or a careless copy would."""
    directory = checkpoint_dir(ckpt, 4)
    shard = os.path.join(directory, sorted(f for f in os.listdir(directory) if f.endswith(".distcp"))[0])
    if damage == "truncated distcp":
        with open(shard, "r+b") as f:
            f.truncate(100)
    elif damage == "zeroed distcp":
        size = os.path.getsize(shard)
        with open(shard, "r+b") as f:
            f.write(bytes(size))
    elif damage == "missing distcp":
        os.remove(shard)
    elif damage == "binary tracker":
        with open(os.path.join(ckpt, TRACKER_FILE), "wb") as f:
            f.write(b"\x80\x04\x95\x00")
    elif damage == "binary run_meta":
        with open(os.path.join(directory, "run_meta.json"), "wb") as f:
            f.write(b"\x80\x04\x95\x00")
    else:  # a missing file
        os.remove(os.path.join(directory, damage.split()[1]))
    return shard


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated distcp", r"{shard} is truncated: 100 bytes, its index \({dir}/\.metadata\) needs \d+"),
        ("zeroed distcp", r"{shard} is corrupt: the record of \S+ at byte \d+ is not a tensor record"),
        ("missing distcp", r"checkpoint {dir} is incomplete: {name} is missing"),
        ("missing .metadata", r"checkpoint {dir} is incomplete: \.metadata is missing"),
        ("missing common.pt", r"checkpoint {dir} is incomplete: common\.pt is missing"),
        ("missing metadata.json", r"checkpoint {dir} is incomplete: metadata\.json is missing"),
        ("binary tracker", r"{ckpt}/latest_checkpointed_iteration\.txt: expected an iteration number, found 4 bytes "
                           r"of binary data"),
        ("binary run_meta", r"{dir}/run_meta\.json is corrupt: .*can't decode byte 0x80.*"),
    ],
)
def test_damaged_checkpoint_is_one_line_naming_the_file(saved, tmp_path, megatron_world_of_one, damage, message):
    ckpt = _copy(saved, tmp_path)
    shard = _damage(ckpt, damage)
    with pytest.raises(CheckpointError) as error:
        _load_here("--load", ckpt)
    text = str(error.value)
    pattern = message.format(shard=re.escape(shard), dir=re.escape(checkpoint_dir(ckpt, 4)), ckpt=re.escape(ckpt),
                             name=re.escape(os.path.basename(shard)))
    assert re.fullmatch(pattern, text), text  # the whole message: one line, no traceback


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--moe-ffn-hidden-size", "32"], "saved with --moe-ffn-hidden-size 64, this run has 32"),
        (["--bf16"], r"saved in fp32 \(neither --bf16 nor --fp16\), this run is bf16 \(--bf16\): its optimizer "
                     r"state does not fit; use the same precision flag, or take the weights only with --no-load-optim "
                     r"or --finetune"),
    ],
)
def test_shape_or_precision_mismatch_names_the_flag(saved, megatron_world_of_one, flags, message):
    root, _ = saved
    with pytest.raises(CheckpointError, match=message):
        _load_here("--load", os.path.join(root, "ckpt"), *flags)


def test_run_meta_records_every_shape_flag(saved):
    root, _ = saved
    meta = json.load(open(os.path.join(checkpoint_dir(os.path.join(root, "ckpt"), 4), "run_meta.json")))
    # tests/tiny.py: 4 layers, hidden 32, 4 heads, FFN 64, 4 experts (switch), seq 16, fp32.
    expected = {"num_layers": 4, "hidden_size": 32, "num_attention_heads": 4, "ffn_hidden_size": 64, "num_experts": 4,
                "moe_ffn_hidden_size": 64, "moe_layer_freq": 2, "moe_router_type": "switch", "padded_vocab_size": 128,
                "max_position_embeddings": 16, "precision": "fp32"}
    assert {k: meta.get(k) for k in expected} == expected


def test_precision_change_with_weights_only_loads(saved, megatron_world_of_one):
    root, _ = saved
    session = _load_here("--load", os.path.join(root, "ckpt"), "--bf16", "--no-load-optim")
    assert session.state.iteration == 4


def test_load_without_a_tracker_starts_from_scratch(tmp_path, megatron_world_of_one, capsys):
    empty = str(tmp_path / "fresh")
    assert _load_here("--load", empty).state.iteration == 0  # as in Megatron-LM: README's --save ckpt --load ckpt
    assert f"no checkpoint in {empty} (latest_checkpointed_iteration.txt is missing): training from scratch" in (
        capsys.readouterr().out
    )
    with pytest.raises(CheckpointError, match=f"--finetune: no checkpoint in --load {re.escape(empty)}"):
        _load_here("--load", empty, "--finetune")


def test_checkpoints_without_a_tracker_are_not_overwritten_by_a_fresh_start(saved, tmp_path, megatron_world_of_one):
    ckpt = _copy(saved, tmp_path)
    os.remove(os.path.join(ckpt, TRACKER_FILE))
    with pytest.raises(CheckpointError, match=r"holds checkpoints \(iter_0000002, iter_0000004\) but no "
                                              r"latest_checkpointed_iteration\.txt"):
        _load_here("--load", ckpt)


def test_a_flipped_bit_in_a_shard_is_named_at_load(saved, tmp_path, megatron_world_of_one):
    ckpt = _copy(saved, tmp_path)
    session = _load_here("--load", ckpt)
    intact = _state_tensors(session)
    shard = next(f for f in os.listdir(checkpoint_dir(ckpt, 4)) if f.endswith(".distcp"))
    path = os.path.join(checkpoint_dir(ckpt, 4), shard)
    data = bytearray(open(path, "rb").read())
    # One low mantissa bit of the word embedding's first value: the file stays loadable.
    embedding = session.model[0].module.embedding.word_embeddings.weight
    at = data.find(embedding.detach().numpy().tobytes()[:64])
    assert at > 0
    data[at] ^= 0x01
    open(path, "wb").write(bytes(data))
    with pytest.raises(CheckpointError, match=rf"iter_0000004/{shard} is corrupt: CRC-32 [0-9a-f]{{8}}, "
                                              r"[0-9a-f]{8} was written"):
        _load_here("--load", ckpt)
    # Without the checksums (checkpoints of older versions) the flip loads silently as another number.
    os.remove(os.path.join(checkpoint_dir(ckpt, 4), "checksums.json"))
    flipped = _state_tensors(_load_here("--load", ckpt))
    assert sum(not torch.equal(a, b) for a, b in zip(flipped, intact)) == 1


def _state_tensors(session):
    from megatron_evomoe.training.optimizer_state import optimizer_copy

    tensors = []
    for param in session.model[0].parameters():
        tensors += [param.detach().clone()] + [v.clone() for v in optimizer_copy(session.optimizer, param).state.values()]
    return tensors


def test_missing_or_garbled_tracker_and_missing_directory(saved, tmp_path, megatron_world_of_one):
    ckpt = _copy(saved, tmp_path)
    os.remove(os.path.join(ckpt, TRACKER_FILE))
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt is missing"):
        read_tracker(ckpt)
    with open(os.path.join(ckpt, TRACKER_FILE), "w") as f:
        f.write("four")
    with pytest.raises(CheckpointError, match="expected an iteration number, found 'four'"):
        read_tracker(ckpt)
    with open(os.path.join(ckpt, TRACKER_FILE), "w") as f:
        f.write("6")
    with pytest.raises(CheckpointError, match="names iteration 6, but .*iter_0000006 is missing"):
        _load_here("--load", ckpt)


def test_architecture_mismatch_names_the_flag(saved, megatron_world_of_one):
    root, _ = saved
    with pytest.raises(CheckpointError, match="saved with --hidden-size 32, this run has 64"):
        _load_here("--load", os.path.join(root, "ckpt"), "--hidden-size", "64")


def test_a_crash_mid_save_leaves_the_previous_checkpoint_loadable(saved, tmp_path, megatron_world_of_one):
    ckpt = _copy(saved, tmp_path)
    # A save of iteration 6 died after writing part of its files: only the .tmp directory exists.
    partial = checkpoint_dir(ckpt, 6) + ".tmp"
    shutil.copytree(checkpoint_dir(ckpt, 4), partial)
    os.remove(os.path.join(partial, "common.pt"))
    assert read_tracker(ckpt) == 4
    assert _load_here("--load", ckpt).state.iteration == 4


def test_a_failed_save_of_common_pt_names_the_os_reason_and_keeps_the_previous_checkpoint(
    saved, tmp_path, megatron_world_of_one
):
    ckpt = _copy(saved, tmp_path)
    session = _load_here("--load", ckpt, "--save", ckpt)
    session.state.iteration = 6
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    # common.pt (~3 kB, torch.save on rank 0) no longer fits; torch reports that without the OS error
    # ("inline_container.cc ... unexpected pos"), so the reason comes from a probe write.
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(CheckpointError) as error:
            save(session)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert str(error.value) == f"cannot write checkpoint {checkpoint_dir(ckpt, 6)}: File too large"
    assert sorted(os.listdir(ckpt)) == sorted([TRACKER_FILE, "iter_0000002", "iter_0000004"])
    assert _load_here("--load", ckpt).state.iteration == 4


def test_weights_only_load_refreshes_the_fp32_master_copies(saved, megatron_world_of_one):
    from megatron_evomoe.training.optimizer_state import optimizer_copy

    root, _ = saved
    session = _load_here("--load", os.path.join(root, "ckpt"), "--finetune", "--bf16")
    assert session.state.iteration == 0
    for param in session.model[0].parameters():
        copy = optimizer_copy(session.optimizer, param)
        assert copy.main.dtype == torch.float32 and torch.equal(copy.main, param.detach().float())


def test_resume_keeps_the_checkpoint_padded_vocabulary(tmp_path):
    from types import SimpleNamespace

    from megatron_evomoe.arguments import parse_args
    from megatron_evomoe.training.entry import configure
    from tests.tiny import tiny_args

    ckpt = tmp_path / "ckpt"
    os.makedirs(checkpoint_dir(str(ckpt), 7))
    (ckpt / TRACKER_FILE).write_text("7")
    (ckpt / "iter_0000007" / "run_meta.json").write_text(json.dumps({"padded_vocab_size": 128}))
    tokenizer = SimpleNamespace(vocab_size=120)
    args = parse_args(tiny_args("--make-vocab-size-divisible-by", "8", "--load", str(ckpt)))
    run, _ = configure(args, lambda a: tokenizer)
    assert run.model.vocab_size == 128  # TP=1 alone would pad 120 to 120
    fresh = parse_args(tiny_args("--make-vocab-size-divisible-by", "8"))
    assert configure(fresh, lambda a: tokenizer)[0].model.vocab_size == 120


def test_checkpoints_of_the_previous_format_still_load(saved, tmp_path, megatron_world_of_one):
    """Written as before model-space optimizer keys, content metadata and checksums (same layout)."""
    from dataclasses import asdict

    from megatron.core import dist_checkpointing

    from megatron_evomoe.training.checkpointing import META_FILE, _rng_sharded_object, _rng_state, unwrap_model

    reference = _load_here("--load", os.path.join(saved[0], "ckpt"))
    root = str(tmp_path / "old")
    os.makedirs(checkpoint_dir(root, 4))
    model_sd = unwrap_model(reference.model[0]).sharded_state_dict()
    dist_checkpointing.save({
        "model": model_sd,
        "optimizer": reference.optimizer.sharded_state_dict(model_sd),  # megatron's chained format
        "opt_param_scheduler": reference.scheduler.state_dict(),
        "train_state": asdict(reference.state),
        "extra": {},
        "rng_state": _rng_sharded_object(_rng_state()),
    }, checkpoint_dir(root, 4))
    shutil.copy(os.path.join(saved[0], "ckpt", "iter_0000004", META_FILE), checkpoint_dir(root, 4))
    with open(os.path.join(root, TRACKER_FILE), "w") as f:
        f.write("4")
    session = _load_here("--load", root)
    assert session.state.iteration == 4
    assert all(torch.equal(a, b) for a, b in zip(_state_tensors(session), _state_tensors(reference)))
