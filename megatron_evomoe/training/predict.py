"""Model outputs for every example of a dataset, in dataset order, on every rank.

Inference runs through megatron's forward-only schedule (so pipeline stages, tensor and expert
parallelism work as in training) with ``collect_non_loss_data``: the last stage's loss function
returns each micro-batch's ``{"index", "output"}`` instead of a loss. The dataset is cycled to whole
micro-batches on every data-parallel rank; each rank that holds outputs (last pipeline stage, TP rank
0) contributes them once, and an all-gather puts every example's output back at its index on every
rank, so all ranks can compute metrics and take the same decisions (best epoch, saving).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from torch.utils.data import Dataset

from megatron_evomoe.device import batch_to_device
from megatron_evomoe.training.data_loading import build_iterator


class _Cycled(Dataset):
    """``dataset`` repeated up to ``length`` samples (the tail of the last micro-batches)."""

    def __init__(self, dataset: Dataset, length: int):
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.dataset[index % len(self.dataset)]


def _device_step(forward_step: Callable):
    def step(data_iterator, model):
        return forward_step(batch_to_device(next(data_iterator)), model)

    return step


@torch.no_grad()
def predict_outputs(
    model_chunks, forward_step: Callable, dataset: Dataset, micro_batch_size: int, seq_length: int
) -> np.ndarray:
    """``[len(dataset), ...]`` float outputs, ordered by the samples' ``index``.

    Args:
        model_chunks: the DDP-wrapped model of this rank.
        forward_step: ``(batch, model) -> (output, loss_func)``; ``loss_func(output,
            non_loss_data=True)`` must return ``{"index": [b], "output": [b, ...]}``.
        dataset: samples with an ``index`` entry equal to their position.
        micro_batch_size, seq_length: shapes of the pipeline's messages.
    """
    num_examples = len(dataset)
    dp_rank = parallel_state.get_data_parallel_rank()
    dp_size = parallel_state.get_data_parallel_world_size()
    num_microbatches = max(1, math.ceil(num_examples / (micro_batch_size * dp_size)))
    padded = _Cycled(dataset, num_microbatches * micro_batch_size * dp_size)
    iterator = build_iterator(padded, 0, micro_batch_size, dp_rank, dp_size)
    for chunk in model_chunks:
        chunk.eval()
    try:
        store = get_forward_backward_func()(
            forward_step_func=_device_step(forward_step),
            data_iterator=iterator,
            model=model_chunks,
            num_microbatches=num_microbatches,
            seq_length=seq_length,
            micro_batch_size=micro_batch_size,
            decoder_seq_length=seq_length,
            forward_only=True,
            collect_non_loss_data=True,
        )
    finally:
        for chunk in model_chunks:
            chunk.train()
    holds_outputs = parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
    local = None
    if holds_outputs and store:
        local = (
            torch.cat([item["index"].cpu() for item in store]),
            torch.cat([item["output"].float().cpu() for item in store]),
        )
    pieces = [local]
    if dist.is_initialized() and dist.get_world_size() > 1:
        pieces = [None] * dist.get_world_size()
        dist.all_gather_object(pieces, local)
    return _assemble(pieces, num_examples)


def _assemble(pieces, num_examples: int) -> np.ndarray:
    pieces = [p for p in pieces if p is not None]
    if not pieces:
        raise RuntimeError("no rank returned outputs (is a last pipeline stage in the world?)")
    indices = torch.cat([p[0] for p in pieces]).numpy()
    outputs = torch.cat([p[1] for p in pieces]).numpy()
    result = np.zeros((num_examples,) + outputs.shape[1:], dtype=np.float64)
    filled = np.zeros(num_examples, dtype=bool)
    result[indices] = outputs
    filled[indices] = True
    if not filled.all():
        raise RuntimeError(f"{int((~filled).sum())} of {num_examples} examples got no output")
    return result
