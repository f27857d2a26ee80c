"""GPT-MoE: megatron-core ``GPTModel`` built from our layer spec, and its loss."""

from __future__ import annotations

from typing import Optional

import torch
from megatron.core.models.gpt import GPTModel
from megatron.core.transformer.enums import AttnMaskType

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.device import use_transformer_engine
from megatron_evomoe.models.init import initialize_parameters
from megatron_evomoe.models.layer_specs import decoder_block_spec


def build_gpt_model(
    config: ModelConfig, pre_process: bool = True, post_process: bool = True, vp_stage: Optional[int] = None
) -> GPTModel:
    """A GPT (learned absolute positions, tied input/output embeddings) for this pipeline stage."""
    spec = decoder_block_spec(config, use_transformer_engine(), AttnMaskType.causal, vp_stage)
    model = GPTModel(
        config=config,
        transformer_layer_spec=spec,
        vocab_size=config.vocab_size,
        max_sequence_length=config.max_position_embeddings,
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=True,
        position_embedding_type="learned_absolute",
        vp_stage=vp_stage,
    )
    initialize_parameters(model, config)
    return model


def gpt_forward(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """Run ``model`` on a batch; returns per-token LM losses ``[b, s]`` on the last stage.

    Token ids also go to the MoE layers (hash / StableMoE routing) through ``padding_mask``;
    see ``moe/token_ids.py``.
    """
    return model(
        batch["tokens"],
        batch["position_ids"],
        # Causal attention builds its own mask; the dataset adds one only for --reset-attention-mask.
        batch.get("attention_mask"),
        labels=batch["labels"],
        padding_mask=batch["tokens"],
    )


def masked_token_loss(per_token_loss: torch.Tensor, loss_mask: torch.Tensor):
    """(sum of masked losses, number of loss tokens, {"lm loss": [sum, count]}) for megatron's schedule.

    megatron's schedule divides the sum by the token count (and by the number of micro-batches).
    """
    loss_mask = loss_mask.float()
    loss_sum = torch.sum(per_token_loss.float() * loss_mask)
    num_tokens = loss_mask.sum().to(torch.int)
    reporting = torch.stack([loss_sum.detach(), loss_mask.sum()])
    return loss_sum, num_tokens, {"lm loss": reporting}
