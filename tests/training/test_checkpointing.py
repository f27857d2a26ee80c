"""Checkpoints: exact resume, resharding to another TP size, atomicity and clear errors."""

import json
import os
import shutil
import tempfile

import pytest
import torch

from megatron_evomoe.training.checkpointing import TRACKER_FILE, CheckpointError, checkpoint_dir, read_tracker
from tests.distributed import run_ranks
from megatron_evomoe.training.loop import setup_session
from tests.tiny import tiny_gpt_task, tiny_run
from tests.training.checkpoint_ranks import load_and_evaluate, train


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


def test_corrupt_checkpoint_gives_a_clear_error(saved, tmp_path, megatron_world_of_one):
    ckpt = _copy(saved, tmp_path)
    shard = next(f for f in os.listdir(checkpoint_dir(ckpt, 4)) if f.endswith(".distcp"))
    with open(os.path.join(checkpoint_dir(ckpt, 4), shard), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match=rf"iter_0000004/{shard} is corrupt: 100 bytes, \d+ were written"):
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
    with pytest.raises(CheckpointError, match="expected an iteration number"):
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
