"""Fixtures of the training tests."""

import json

import pytest
from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

from megatron_evomoe import initialize
from megatron_evomoe.training.loop import pretrain
from tests.tiny import tiny_gpt_task, tiny_run


@pytest.fixture
def train_in_process(tmp_path, megatron_world_of_one):
    """``run(*flags) -> log records``: the tiny model trained in this process, every call from the
    same RNG state, so that two calls differ only by their flags."""

    def run(*flags):
        log = str(tmp_path / f"log{len(list(tmp_path.iterdir()))}.jsonl")
        initialize.set_seeds(7)
        pretrain(tiny_run(*flags, "--log-json", log), tiny_gpt_task())
        return [json.loads(line) for line in open(log)]

    yield run
    MoEAuxLossAutoScaler.main_loss_backward_scale = None  # megatron class state: do not leak to other tests
