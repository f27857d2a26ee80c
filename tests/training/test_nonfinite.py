"""Non-finite steps and state: skipped and counted, never saved as the latest checkpoint, never loaded
silently. A run that stops for them exits with an error naming the last good checkpoint."""

import json
import os
import shutil
from functools import partial

import pytest
import torch

from megatron_evomoe.models.gpt import build_gpt_model, gpt_forward, masked_token_loss
from megatron_evomoe.training import checkpointing
from megatron_evomoe.training.checkpointing import (
    TRACKER_FILE,
    CheckpointError,
    checkpoint_dir,
    read_tracker,
    saved_iterations,
)
from megatron_evomoe.training.loop import Task, TrainingStopped, pretrain, setup_session
from megatron_evomoe.training.optimizer_state import optimizer_copy
from tests.tiny import SyntheticGPTData, tiny_gpt_task, tiny_run


class PoisonedData(SyntheticGPTData):
    """Samples from index ``first_bad`` on make the loss NaN (flag read by the forward step)."""

    def __init__(self, first_bad: int):
        super().__init__(256, 16)
        self.first_bad = first_bad

    def __getitem__(self, index):
        sample = super().__getitem__(index)
        sample["poison"] = torch.tensor(float("nan") if index >= self.first_bad else 1.0)
        return sample


def forward_step(batch, model):
    output = gpt_forward(model, batch) * batch["poison"][:, None]
    return output, partial(masked_token_loss, loss_mask=batch["loss_mask"])


def _dirs(root):
    return sorted(name for name in os.listdir(root) if name.startswith("iter_"))


def test_a_stop_for_nan_steps_keeps_the_last_good_checkpoint_latest(tmp_path, megatron_world_of_one):
    base = tiny_gpt_task()
    # Global batch 4: iterations 1-2 use samples 0-7 (fine); from iteration 3 on every step is NaN.
    task = Task("poisoned", base.build_model, lambda run, n: (PoisonedData(8), None, None), forward_step)
    log, ckpt = str(tmp_path / "log.jsonl"), str(tmp_path / "ckpt")
    run = tiny_run("--train-iters", "20", "--max-skipped-iters", "3", "--log-json", log, "--save", ckpt,
                   "--save-interval", "1", "--save-retain", "1")
    with pytest.raises(TrainingStopped) as stopped:
        pretrain(run, task)
    message = str(stopped.value)
    assert "3 consecutive iterations had a non-finite loss or gradient norm (iterations 3-5)" in message
    assert f"The last good checkpoint is {checkpoint_dir(ckpt, 1)} (latest)" in message
    records = [json.loads(line) for line in open(log)]
    assert [r["skipped_iters"] for r in records] == [0, 0, 1, 2]
    assert records[2]["lm_loss"] == "nan"
    # iter_2 fed the first NaN step: poisoned from the start of the streak. The saves during the
    # streak were never latest, and retention (1) did not delete iter_1 while iter_2 was unconfirmed.
    assert read_tracker(ckpt) == 1
    assert _dirs(ckpt) == ["iter_0000001", "iter_0000002.nonfinite", "iter_0000003.nonfinite",
                           "iter_0000004.nonfinite", "iter_0000005.nonfinite"]
    session = setup_session(tiny_run("--train-iters", "20", "--load", ckpt), base)
    assert session.state.iteration == 1
    assert all(torch.isfinite(p).all() for p in session.model[0].parameters())


def _inf_embedding_task():
    base = tiny_gpt_task()

    def build_model(config, pre, post):
        model = build_gpt_model(config, pre, post)
        with torch.no_grad():
            model.embedding.word_embeddings.weight[:, 0] = float("inf")
        return model

    return Task("inf-embedding", build_model, base.build_datasets, base.forward_step)


def test_inf_in_the_embedding_ends_with_an_error_and_no_latest_checkpoint(tmp_path, megatron_world_of_one):
    ckpt = str(tmp_path / "ckpt")
    run = tiny_run("--train-iters", "4", "--save", ckpt, "--save-interval", "2")  # --max-skipped-iters 10
    with pytest.raises(TrainingStopped, match=r"4 consecutive .*\(iterations 1-4\); stopping. There is no good "
                                             r"checkpoint in .*ckpt\. The state at the stop is in .*iter_0000004.nonfinite"):
        pretrain(run, _inf_embedding_task())
    assert not os.path.exists(os.path.join(ckpt, TRACKER_FILE))
    assert _dirs(ckpt) == ["iter_0000002.nonfinite", "iter_0000004.nonfinite"]
    # Loading such a checkpoint (as if an older version had made it latest) is refused, by name.
    os.replace(os.path.join(ckpt, "iter_0000004.nonfinite"), checkpoint_dir(ckpt, 4))
    with open(os.path.join(ckpt, TRACKER_FILE), "w") as f:
        f.write("4")
    with pytest.raises(CheckpointError, match=r"iter_0000004 holds non-finite values in embedding.word_embeddings."
                                              r"weight \(--allow-nonfinite-load loads it anyway\)"):
        setup_session(tiny_run("--load", ckpt), tiny_gpt_task())
    session = setup_session(tiny_run("--load", ckpt, "--allow-nonfinite-load"), tiny_gpt_task())
    assert torch.isinf(session.model[0].module.embedding.word_embeddings.weight[:, 0]).all()


@pytest.fixture(scope="module")
def nan_moment_checkpoint(tmp_path_factory, megatron_world_of_one):
    """iter_2 of a healthy run, then re-saved with a NaN in the router's Adam moment (as latest)."""
    root = str(tmp_path_factory.mktemp("nan_moment") / "ckpt")
    pretrain(tiny_run("--train-iters", "8", "--save", root, "--exit-interval", "2"), tiny_gpt_task())
    session = setup_session(tiny_run("--train-iters", "8", "--load", root), tiny_gpt_task())
    router = session.model[0].module.decoder.layers[0].mlp.router.weight
    optimizer_copy(session.optimizer, router).state["exp_avg"][0, 0] = float("nan")
    checkpointing.save_checkpoint(root, session.state, session.model, session.optimizer, session.scheduler,
                                  run_meta={"world_size": 1})
    return root


def test_nan_in_an_adam_moment_is_refused_at_load(nan_moment_checkpoint, megatron_world_of_one):
    with pytest.raises(CheckpointError, match=r"iter_0000002 holds non-finite values in "
                                              r"optimizer.state.exp_avg.decoder.layers.0.mlp.router.weight"):
        setup_session(tiny_run("--train-iters", "8", "--load", nan_moment_checkpoint), tiny_gpt_task())


def test_nan_in_an_adam_moment_never_becomes_latest(nan_moment_checkpoint, tmp_path, megatron_world_of_one):
    ckpt = str(tmp_path / "ckpt")
    shutil.copytree(nan_moment_checkpoint, ckpt)
    run = tiny_run("--train-iters", "8", "--load", ckpt, "--allow-nonfinite-load", "--save", ckpt,
                   "--save-interval", "1")
    # The NaN moment passes into the router weight at the first step (its gradient is finite).
    with pytest.raises(TrainingStopped, match=r"non-finite values in decoder.layers.0.mlp.router.weight at "
                                             r"iteration 3; stopping .*The last good checkpoint is .*iter_0000002"):
        pretrain(run, tiny_gpt_task())
    assert read_tracker(ckpt) == 2
    assert _dirs(ckpt) == ["iter_0000002", "iter_0000003.nonfinite"]


def test_divergence_at_a_huge_lr_leaves_the_previous_checkpoint_latest(tmp_path, megatron_world_of_one):
    ckpt = str(tmp_path / "ckpt")
    pretrain(tiny_run("--save", ckpt, "--exit-interval", "2"), tiny_gpt_task())
    huge = ["--load", ckpt, "--save", ckpt, "--save-interval", "1", "--lr", "1e9"]
    with pytest.raises(ValueError, match=r"^--lr: the checkpoint's LR schedule has learning rate 0.01, this run "
                                         r"1000000000.0; pass --override-opt_param-scheduler"):
        pretrain(tiny_run(*huge), tiny_gpt_task())
    # Step 3 applies a 2.5e8-sized update: finite weights (saved as iter_3), NaN on every forward after.
    with pytest.raises(TrainingStopped, match=r"\(iteration 4\); stopping. The last good checkpoint is "
                                             r".*iter_0000002 \(latest\)"):
        pretrain(tiny_run(*huge, "--override-opt_param-scheduler"), tiny_gpt_task())
    assert read_tracker(ckpt) == 2
    assert _dirs(ckpt) == ["iter_0000002", "iter_0000003.nonfinite", "iter_0000004.nonfinite"]
    assert saved_iterations(ckpt) == [2]
