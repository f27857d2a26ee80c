"""Routers built from the training data (the balanced hash of Hash Layers) get token counts here.

Counted over the first samples of the training data (as many as the routers ask for, e.g.
``--hash-frequency-samples``), identically on every rank, so no communication is needed and every
rank builds the same table.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from megatron_evomoe.moe.evolution import moe_layers


def token_counts(dataset: Dataset, vocab_size: int, num_samples: int) -> torch.Tensor:
    """``[vocab_size]`` int64 counts of the ``tokens`` of the first ``num_samples`` samples."""
    counts = torch.zeros(vocab_size, dtype=torch.int64)
    for index in range(min(num_samples, len(dataset))):
        tokens = torch.as_tensor(dataset[index]["tokens"]).long().flatten()
        counts += torch.bincount(tokens, minlength=vocab_size)[:vocab_size]
    return counts


def prepare_routers_from_data(model_chunks, dataset: Dataset, vocab_size: int) -> bool:
    """Give token counts to every router that needs them and is not prepared yet; True if any did."""
    routers = [
        layer.router for layer in moe_layers(model_chunks)
        if layer.router.NEEDS_TOKEN_COUNTS and not layer.router.is_prepared()
    ]
    if not routers:
        return False
    counts = token_counts(dataset, vocab_size, max(router.token_count_samples() for router in routers))
    for router in routers:
        router.prepare_from_data(counts)
    return True
