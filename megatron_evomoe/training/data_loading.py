"""Deterministic, resumable micro-batch iterators over map-style datasets.

Sample order is a pure function of ``consumed_samples``: the global batch of step ``i`` is samples
``[i*G, (i+1)*G)`` (G = global batch size), split into micro-batches of ``m * dp`` samples, of which
data-parallel rank ``r`` takes ``[r*m, (r+1)*m)``. Any layout with the same global batch therefore
sees the same samples per step, and resuming needs nothing but ``consumed_samples``.
"""

from __future__ import annotations

import signal
from typing import Iterator, List

import torch
from torch.utils.data import DataLoader, Dataset

from megatron_evomoe import compat


class MicroBatchSampler:
    """Yields this data-parallel rank's micro-batch index lists, starting at ``consumed_samples``."""

    def __init__(self, num_samples: int, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        if num_samples <= 0:
            raise ValueError("the dataset has no samples")
        self.num_samples = num_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.dp_rank = dp_rank
        self.dp_size = dp_size

    def __iter__(self) -> Iterator[List[int]]:
        stride = self.micro_batch_size * self.dp_size
        start = self.consumed_samples
        while True:
            first = start + self.dp_rank * self.micro_batch_size
            # Wrap around (megatron datasets are sized to the run, so this is only a safety net).
            yield [(first + j) % self.num_samples for j in range(self.micro_batch_size)]
            start += stride


def _init_worker(_worker_id: int) -> None:
    """A DataLoader worker dies with the trainer and leaves SIGTERM to it: SLURM signals every
    process of the job, and the trainer must outlive its workers to save (--exit-signal-handler)."""
    compat.die_with_parent()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def build_iterator(
    dataset: Dataset, consumed_samples: int, micro_batch_size: int, dp_rank: int, dp_size: int, num_workers: int = 0
) -> Iterator[dict]:
    """An endless iterator of collated micro-batches for this data-parallel rank."""
    sampler = MicroBatchSampler(len(dataset), consumed_samples, micro_batch_size, dp_rank, dp_size)
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        # Its own generator: creating an iterator must not consume the global RNG that dropout and
        # gumbel noise draw from (else a resumed run drifts from an uninterrupted one).
        generator=torch.Generator().manual_seed(0),
        num_workers=num_workers,
        worker_init_fn=_init_worker if num_workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=num_workers > 0,
    )
    return iter(loader)
