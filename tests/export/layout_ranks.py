"""Per-rank body of the export's layout check: train under a parallel layout, save, return logits."""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from megatron_evomoe import initialize
from megatron_evomoe.training.checkpointing import unwrap_model
from megatron_evomoe.training.loop import pretrain
from tests.tiny import tiny_gpt_task, tiny_run


def train_and_logits(flags: list[str], ids: torch.Tensor) -> torch.Tensor:
    """pretrain with ``flags`` (a --save among them); the trained model's ``[b, s, V]`` logits for
    ``ids`` in its final routing state (vocabulary shards gathered over TP)."""
    run = tiny_run(*flags)
    initialize.initialize(run.layout, run.training.seed)
    try:
        session = pretrain(run, tiny_gpt_task(num_samples=64))
        model = unwrap_model(session.model[0])
        model.eval()
        with torch.no_grad():
            logits = model(ids, torch.arange(ids.shape[1]).expand_as(ids), None, padding_mask=ids)
        group = parallel_state.get_tensor_model_parallel_group()
        shards = [torch.empty_like(logits) for _ in range(dist.get_world_size(group))]
        dist.all_gather(shards, logits.contiguous(), group=group)
        return torch.cat(shards, dim=-1)
    finally:
        initialize.shutdown()
