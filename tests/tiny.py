"""Tiny models, flags and data shared by tests (no data files needed)."""

from __future__ import annotations

import os
from functools import partial

import torch
from torch.utils.data import Dataset

from megatron_evomoe.arguments import parse_args
from megatron_evomoe.models.gpt import build_gpt_model, gpt_forward, masked_token_loss
from megatron_evomoe.run_config import build_run_config
from megatron_evomoe.training.loop import Task

VOCAB = 128

REQUIRED = [
    "--num-layers", "4", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "128",
    "--micro-batch-size", "4", "--train-iters", "100", "--lr", "1e-3",
]
"""The flags Megatron-LM requires, at the values they defaulted to before they became required."""


def with_required(*flags: str) -> list[str]:
    """:data:`REQUIRED` followed by ``flags`` (a flag given again in ``flags`` wins)."""
    return [*REQUIRED, *flags]


def tiny_args(*extra: str) -> list[str]:
    """Flags of a 4-layer hidden-32 GPT with 4 experts on layers 1 and 3, no dropout.

    Also without the routers' training noise (Switch's input jitter, GShard's random routing): its
    draws depend on how tokens are split over ranks, and tests compare layouts and hand computations.
    Tests of that noise turn it back on.
    """
    return [
        "--num-layers", "4", "--hidden-size", "32", "--num-attention-heads", "4", "--ffn-hidden-size", "64",
        "--seq-length", "16", "--num-experts", "4", "--micro-batch-size", "2", "--global-batch-size", "4",
        "--train-iters", "4", "--lr", "1e-2", "--hidden-dropout", "0", "--attention-dropout", "0",
        "--log-interval", "1", "--eval-interval", "1000", "--seed", "7", "--clip-grad", "1.0",
        "--moe-input-jitter-eps", "0", "--no-gshard-random-routing",
        *extra,
    ]


def tiny_run(*extra: str, world_size: int | None = None):
    """A validated RunConfig for :func:`tiny_args` (+ extra flags)."""
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    return build_run_config(parse_args(tiny_args(*extra)), VOCAB, world_size)


class SyntheticGPTData(Dataset):
    """Deterministic samples with a learnable pattern (next token = token + 1) and 10% noise."""

    def __init__(self, num_samples: int, seq_length: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (num_samples, 1), generator=gen)
        seq = (start + torch.arange(seq_length + 1)) % VOCAB
        noise = torch.rand(seq.shape, generator=gen) < 0.1
        self.seq = torch.where(noise, torch.randint(0, VOCAB, seq.shape, generator=gen), seq)
        self.seq_length = seq_length

    def __len__(self) -> int:
        return self.seq.shape[0]

    def __getitem__(self, index: int) -> dict:
        seq = self.seq[index]
        return {
            "tokens": seq[:-1].clone(),
            "labels": seq[1:].clone(),
            "loss_mask": torch.ones(self.seq_length),
            "position_ids": torch.arange(self.seq_length),
        }


def gpt_forward_step(batch, model):
    return gpt_forward(model, batch), partial(masked_token_loss, loss_mask=batch["loss_mask"])


def tiny_gpt_task(num_samples: int = 256) -> Task:
    """A GPT task over :class:`SyntheticGPTData` (train and valid splits from different seeds)."""

    def build_datasets(run, _num_samples):
        seq = run.training.seq_length
        return SyntheticGPTData(num_samples, seq, 0), SyntheticGPTData(64, seq, 1), None

    return Task("tiny-gpt", lambda c, pre, post: build_gpt_model(c, pre, post), build_datasets, gpt_forward_step)


def train_logged(*flags: str, log: str) -> list[dict]:
    """Train ``tiny_run(*flags)`` in this process with ``--log-json log``; the log's records.

    megatron-core keeps the aux-loss backward scale as class state, so it is cleared around the run
    to keep tests independent of each other."""
    import json

    from megatron.core.transformer.moe.moe_utils import MoEAuxLossAutoScaler

    from megatron_evomoe import initialize
    from megatron_evomoe.training.loop import pretrain

    run = tiny_run(*flags, "--log-json", log)
    initialize.set_seeds(run.training.seed)
    MoEAuxLossAutoScaler.main_loss_backward_scale = None
    try:
        pretrain(run, tiny_gpt_task())
    finally:
        MoEAuxLossAutoScaler.main_loss_backward_scale = None
    with open(log) as handle:
        return [json.loads(line) for line in handle]
