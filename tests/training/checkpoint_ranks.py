"""Per-rank bodies of the checkpoint tests."""

from __future__ import annotations

import os
import signal

import torch

from megatron_evomoe import initialize
from megatron_evomoe.training.loop import evaluate, pretrain, setup_session
from tests.tiny import tiny_gpt_task, tiny_run


def train(flags: list[str]) -> None:
    """pretrain with ``flags`` (--log-json/--save/--load among them)."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        pretrain(run, tiny_gpt_task())
    finally:
        initialize.shutdown()


def load_and_evaluate(flags: list[str]) -> float:
    """Validation loss of the model loaded by ``--load`` in ``flags``."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        task = tiny_gpt_task()
        session = setup_session(run, task)
        _, valid, _ = task.build_datasets(run, None)
        return evaluate(session, task, valid)["val_loss"]
    finally:
        initialize.shutdown()


class _SigtermAtSample(torch.utils.data.Dataset):
    """``dataset``, but reading sample ``index`` on global rank 1 sends SIGTERM to this process."""

    def __init__(self, dataset, index: int):
        self.dataset, self.index = dataset, index

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        if i == self.index and os.environ["RANK"] == "1":
            os.kill(os.getpid(), signal.SIGTERM)
        return self.dataset[i]


def train_with_sigterm(flags: list[str], sample: int) -> int:
    """pretrain with ``flags`` while rank 1 receives SIGTERM when it loads ``sample``; returns the
    iteration the run ended at (pretrain returned normally)."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        task = tiny_gpt_task()
        build = task.build_datasets
        task.build_datasets = lambda run, n: (_SigtermAtSample(build(run, n)[0], sample), *build(run, n)[1:])
        return pretrain(run, task).state.iteration
    finally:
        initialize.shutdown()
