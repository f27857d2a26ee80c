"""Per-rank bodies of the checkpoint tests."""

from __future__ import annotations

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
