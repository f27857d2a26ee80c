"""BERT/RoBERTa-MoE: megatron-core ``BertModel`` built from our layer spec, and its MLM loss.

Why a subclass of megatron's ``BertModel`` (and not the class itself):

* routing token ids must reach every MoE layer (hash / StableMoE routers). megatron's
  ``BertModel.forward`` calls its encoder without ``padding_mask``; :meth:`BertMoEModel.encode`
  passes the ``[b, s]`` token ids there, exactly as ``GPTModel`` does (``moe/token_ids.py``);
* the MLM step also reports accuracy, which needs the vocabulary-parallel logits, not only the loss
  that ``BertModel.forward`` returns;
* megatron's attention-mask sanity check expects a single-layer spec, while ours is a block spec
  (MoE every k-th layer). We always use the ``[b, 1, 1, s]`` padding mask (what megatron uses with
  TE >= 1.10; our SDPA attention broadcasts it), so padded *queries* still see real keys and never
  produce the NaNs of an all-masked softmax row.

Positions are learned absolute embeddings; token types exist only with the binary (NSP/SOP) head,
as in Megatron-LM (``num_tokentypes = 2 if --bert-binary-head else 0``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.models.bert.bert_model import BertModel
from megatron.core.transformer.enums import AttnMaskType

from megatron_evomoe import compat
from megatron_evomoe.config import ModelConfig
from megatron_evomoe.device import use_transformer_engine
from megatron_evomoe.models.init import initialize_parameters
from megatron_evomoe.models.layer_specs import decoder_block_spec
from megatron_evomoe.models.norm import LayerNorm


@dataclass
class MLMOutput:
    """What the last pipeline stage returns for a pretraining micro-batch.

    Attributes:
        lm_loss: ``[b, s]`` per-token cross entropy (all positions; the loss mask selects).
        lm_correct: ``[b, s]`` float, 1 where the arg-max prediction equals the label (no grad).
        binary_logits: ``[b, 2]`` NSP/SOP logits, or None without the binary head.
    """

    lm_loss: torch.Tensor
    lm_correct: torch.Tensor
    binary_logits: Optional[torch.Tensor] = None


class BertMoEModel(BertModel):
    """megatron's BertModel with routing token ids, MLM accuracy and our block spec.

    Args:
        config: model config.
        spec: the transformer block spec (``decoder_block_spec(..., AttnMaskType.padding)``).
        add_binary_head: build the pooler + 2-way NSP/SOP head (``--bert-binary-head``).
        pre_process, post_process, vp_stage: megatron's pipeline arguments.
    """

    def __init__(
        self,
        config: ModelConfig,
        spec,
        add_binary_head: bool = False,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: Optional[int] = None,
    ):
        super().__init__(
            config=config,
            num_tokentypes=2 if add_binary_head else 0,
            transformer_layer_spec=spec,
            vocab_size=config.vocab_size,
            max_sequence_length=config.max_position_embeddings,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=True,
            position_embedding_type="learned_absolute",
            add_binary_head=add_binary_head,
            vp_stage=vp_stage,
        )

    def _sanity_check_attention_and_get_attn_mask_dimension(self) -> str:
        """Our specs take a ``[b, 1, 1, s]`` padding mask (see the module docstring)."""
        return "b11s"

    @property
    def uses_tokentypes(self) -> bool:
        """Whether the embedding has token-type (segment) embeddings."""
        return self.add_binary_head

    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokentype_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Embedding (first stage) + this stage's layers.

        Args:
            input_ids: ``[b, s]`` token ids (every stage receives them: MoE routing reads them).
            attention_mask: ``[b, s]``, 1 for real tokens and 0 for padding.
            tokentype_ids: ``[b, s]`` segment ids, used only with the binary head.

        Returns:
            hidden states ``[s, b, h]`` (``[s/tp, b, h]`` under sequence parallelism), after the final
            layer norm on the last stage.
        """
        extended_mask = self.bert_extended_attention_mask(attention_mask)
        encoder_input = None
        if self.pre_process:
            encoder_input = self.embedding(
                input_ids=input_ids,
                position_ids=self.bert_position_ids(input_ids),
                tokentype_ids=tokentype_ids if self.uses_tokentypes else None,
            )
        return self.encoder(hidden_states=encoder_input, attention_mask=extended_mask, padding_mask=input_ids)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokentype_ids: Optional[torch.Tensor] = None,
        lm_labels: Optional[torch.Tensor] = None,
    ):
        """Hidden states on inner stages; :class:`MLMOutput` on the last stage (needs ``lm_labels``)."""
        hidden = self.encode(input_ids, attention_mask, tokentype_ids)
        if not self.post_process:
            return hidden
        if lm_labels is None:
            raise ValueError("BertMoEModel.forward on the last stage needs lm_labels")
        output_weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        logits, _ = self.output_layer(self.lm_head(hidden_states=hidden), weight=output_weight)
        lm_loss = self.compute_language_model_loss(lm_labels, logits)
        binary_logits = self.binary_head(self.pooler(hidden, 0)) if self.add_binary_head else None
        return MLMOutput(lm_loss, vocab_parallel_correct(logits.detach(), lm_labels), binary_logits)


def vocab_parallel_correct(logits_sbv: torch.Tensor, labels_bs: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` float: 1 where the label's logit is the largest over the whole vocabulary.

    The logits are split over tensor-parallel ranks along the vocabulary (``[s, b, V/tp]``), so the
    arg-max is never materialised: the global maximum (all-reduce MAX) is compared with the label's
    logit (found on the rank that owns it, all-reduce SUM). Ties count as correct.
    """
    with torch.no_grad():
        logits = logits_sbv.float()
        labels = labels_bs.transpose(0, 1)
        vocab_local = logits.shape[-1]
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        start = tp_rank * vocab_local
        local = labels - start
        owned = (local >= 0) & (local < vocab_local)
        label_logit = torch.gather(logits, -1, local.clamp(0, vocab_local - 1).unsqueeze(-1)).squeeze(-1)
        label_logit = torch.where(owned, label_logit, torch.zeros_like(label_logit))
        max_logit = logits.max(dim=-1).values
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            group = parallel_state.get_tensor_model_parallel_group()
            dist.all_reduce(label_logit, group=group)
            dist.all_reduce(max_logit, op=dist.ReduceOp.MAX, group=group)
        return (label_logit >= max_logit).float().transpose(0, 1)


def build_bert_model(
    config: ModelConfig,
    pre_process: bool = True,
    post_process: bool = True,
    add_binary_head: bool = False,
    vp_stage: Optional[int] = None,
    model_class=BertMoEModel,
    **model_kwargs,
) -> BertMoEModel:
    """A BERT-MoE encoder (bidirectional, padding mask) for this pipeline stage, initialised
    layout-independently. ``model_class``/``model_kwargs`` build subclasses (the GLUE classifier)."""
    spec = decoder_block_spec(config, use_transformer_engine(), AttnMaskType.padding, vp_stage)
    compat.bert_lm_head_norm(LayerNorm)  # without apex: a norm that supports sequence parallelism
    model = model_class(
        config, spec, add_binary_head=add_binary_head, pre_process=pre_process,
        post_process=post_process, vp_stage=vp_stage, **model_kwargs,
    )
    initialize_parameters(model, config)
    return model


def bert_forward(model: torch.nn.Module, batch: Dict[str, torch.Tensor]):
    """Run the model on a pretraining batch (see ``data/bert_dataset.py`` for the keys)."""
    return model(batch["tokens"], batch["attention_mask"], batch.get("types"), lm_labels=batch["labels"])


def mlm_loss(output: MLMOutput, loss_mask: torch.Tensor, sentence_labels: Optional[torch.Tensor] = None):
    """(loss sum, number of loss tokens, reported metrics) for megatron's schedule.

    The MLM loss is a mean over masked tokens (megatron divides the sum by the count). With the
    binary head, its cross entropy (mean over the micro-batch) is added, as in Megatron-LM: it is
    scaled by the token count here so that the schedule's division leaves it a per-sample mean.

    Reported: ``lm loss`` and ``mlm accuracy`` (over masked tokens); with the binary head also
    ``sop loss`` and ``sop accuracy`` (per sample).
    """
    mask = loss_mask.float()
    num_masked = mask.sum()
    loss_sum = torch.sum(output.lm_loss.float() * mask)
    reported = {
        "lm loss": torch.stack([loss_sum.detach(), num_masked]),
        "mlm accuracy": torch.stack([torch.sum(output.lm_correct * mask), num_masked]),
    }
    total = loss_sum
    if output.binary_logits is not None:
        logits = output.binary_logits.float()
        per_sample = torch.nn.functional.cross_entropy(logits, sentence_labels.long(), reduction="none")
        count = torch.tensor(float(per_sample.numel()), device=per_sample.device)
        total = total + per_sample.mean() * num_masked.clamp(min=1.0)
        correct = (logits.argmax(dim=-1) == sentence_labels.long()).float().sum()
        reported["sop loss"] = torch.stack([per_sample.sum().detach(), count])
        reported["sop accuracy"] = torch.stack([correct, count])
    return total, num_masked.to(torch.int), reported
