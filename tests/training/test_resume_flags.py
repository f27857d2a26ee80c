"""Resume flags with Megatron-LM's meanings: the LR schedule on resume, --ckpt-step, and --save-retain."""

import os
import shutil

import pytest

from megatron_evomoe.training.checkpointing import CheckpointError, read_tracker, saved_iterations
from megatron_evomoe.training.loop import pretrain, setup_session
from tests.tiny import tiny_gpt_task, tiny_run


@pytest.fixture(scope="module")
def six_iterations(tmp_path_factory, megatron_world_of_one):
    """Checkpoints 1..6 of a 6-iteration run (--lr 1e-2, linear decay to 0 over 6 iterations)."""
    root = str(tmp_path_factory.mktemp("resume") / "ckpt")
    pretrain(tiny_run("--train-iters", "6", "--save", root, "--save-interval", "1"), tiny_gpt_task())
    return root


def _resume(root, *flags):
    return setup_session(tiny_run("--train-iters", "6", "--load", root, *flags), tiny_gpt_task())


@pytest.mark.parametrize("flag,value,name", [
    ("--lr", "2e-2", "learning rate"),
    ("--min-lr", "1e-3", "minimum learning rate"),
    ("--lr-warmup-iters", "2", "warmup iterations"),
    ("--lr-decay-style", "cosine", "learning rate decay style"),
])
def test_a_changed_schedule_flag_is_an_error_naming_it(six_iterations, flag, value, name, megatron_world_of_one):
    with pytest.raises(ValueError, match=rf"^{flag}: the checkpoint's LR schedule has {name} "):
        _resume(six_iterations, flag, value)


def test_a_changed_train_iters_is_an_error_naming_it(six_iterations, megatron_world_of_one):
    with pytest.raises(ValueError, match=r"^--train-iters: .* total number of iterations 6, this run 12"):
        setup_session(tiny_run("--train-iters", "12", "--load", six_iterations), tiny_gpt_task())


def test_override_takes_the_flags_and_use_checkpoint_keeps_the_checkpoint(six_iterations, megatron_world_of_one):
    # Linear decay to --min-lr over --train-iters, 4 of 6 steps done (--ckpt-step 4):
    # lr = min_lr + (max_lr - min_lr) * (1 - 4/6).
    override = _resume(six_iterations, "--ckpt-step", "4", "--lr", "3e-2", "--min-lr", "3e-3",
                       "--override-opt_param-scheduler")
    assert override.optimizer.param_groups[0]["lr"] == pytest.approx(3e-3 + (3e-2 - 3e-3) / 3)
    kept = _resume(six_iterations, "--ckpt-step", "4", "--lr", "3e-2", "--min-lr", "3e-3",
                   "--use-checkpoint-opt_param-scheduler")
    assert kept.optimizer.param_groups[0]["lr"] == pytest.approx(1e-2 / 3)
    assert (kept.scheduler.max_lr, kept.scheduler.min_lr) == (1e-2, 0.0)
    with pytest.raises(ValueError, match="mutually exclusive"):
        tiny_run("--override-opt_param-scheduler", "--use-checkpoint-opt_param-scheduler")


def test_ckpt_step_loads_that_iteration_instead_of_the_latest(six_iterations, megatron_world_of_one):
    assert read_tracker(six_iterations) == 6
    session = _resume(six_iterations, "--ckpt-step", "2")
    assert (session.state.iteration, session.state.consumed_samples) == (2, 8)
    with pytest.raises(CheckpointError, match=r"no checkpoint of iteration 9 in .*: .*iter_0000009 is missing"):
        _resume(six_iterations, "--ckpt-step", "9")
    with pytest.raises(ValueError, match="--ckpt-step needs --load"):
        tiny_run("--ckpt-step", "2")


def test_save_retain_keeps_the_newest_and_the_loaded_checkpoint(six_iterations, tmp_path, megatron_world_of_one):
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(six_iterations, ckpt)
    # Roll back to 2 and save 3 and 4 keeping one: 4 stays (newest) and 2 (loaded); 5 and 6 belong to
    # the abandoned run beyond this one and are left alone.
    pretrain(tiny_run("--train-iters", "6", "--load", ckpt, "--ckpt-step", "2", "--save", ckpt, "--save-interval",
                      "1", "--save-retain", "1", "--exit-interval", "4"), tiny_gpt_task())
    assert saved_iterations(ckpt) == [2, 4, 5, 6]
    assert read_tracker(ckpt) == 4
    fresh = str(tmp_path / "fresh")
    pretrain(tiny_run("--train-iters", "5", "--save", fresh, "--save-interval", "1", "--save-retain", "2"),
             tiny_gpt_task())
    assert saved_iterations(fresh) == [4, 5] and sorted(os.listdir(fresh)) == [
        "iter_0000004", "iter_0000005", "latest_checkpointed_iteration.txt"]
    with pytest.raises(ValueError, match="--save-retain must be >= 1"):
        tiny_run("--save", fresh, "--save-retain", "0")
