"""Non-finite losses skip the update, are counted, and too many in a row stop with a checkpoint."""

import json
from functools import partial

import pytest
import torch

from megatron_evomoe.models.gpt import gpt_forward, masked_token_loss
from megatron_evomoe.training.checkpointing import read_tracker
from megatron_evomoe.training.loop import Task, TrainingStopped, pretrain, setup_session
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


def test_nan_steps_are_skipped_counted_and_stop_training_with_a_checkpoint(tmp_path, megatron_world_of_one):
    base = tiny_gpt_task()
    # Global batch 4: iterations 0-2 use samples 0-11 (fine); from iteration 3 on every step is NaN.
    task = Task("poisoned", base.build_model, lambda run, n: (PoisonedData(12), None, None), forward_step)
    log, ckpt = str(tmp_path / "log.jsonl"), str(tmp_path / "ckpt")
    run = tiny_run("--train-iters", "20", "--max-skipped-iters", "3", "--log-json", log, "--save", ckpt)
    with pytest.raises(TrainingStopped, match="3 consecutive iterations had a non-finite loss"):
        pretrain(run, task)
    records = [json.loads(line) for line in open(log)]
    assert [r["skipped_iters"] for r in records] == [0, 0, 0, 1, 2]
    assert records[3]["lm_loss"] == "nan"
    assert read_tracker(ckpt) == 6
    # The checkpoint holds the weights of the last good step: finite everywhere.
    session = setup_session(tiny_run("--load", ckpt), base)
    assert session.state.iteration == 6 and session.state.skipped_iters == 3
    assert all(torch.isfinite(p).all() for p in session.model[0].parameters())
