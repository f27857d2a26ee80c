"""The GLUE model: the pretrained BERT-MoE encoder with a sentence head on the [CLS] token.

:class:`BertClassifier` *is* a :class:`~megatron_evomoe.models.bert.BertMoEModel` (same modules and
checkpoint keys as pretraining, so any pretraining checkpoint loads into it in any parallel
layout) plus ``classification_head``: RoBERTa's head, dense + tanh on the first token's final hidden
state (megatron's ``Pooler``, which gathers the sequence under sequence parallelism), dropout, and a
projection to the task's classes (one output for STS-B's regression). The head lives on the last
pipeline stage and is replicated over tensor-parallel ranks.

The MLM-only modules (LM head, output bias, NSP/SOP head) are kept so that the module tree and the
pipeline embedding tie are exactly pretraining's, but frozen: they get no gradient, no optimizer
state and no weight decay. A fresh head is drawn for every fine-tuning run, also when starting from
a fine-tuned checkpoint of another task (RTE from MNLI, as in RoBERTa and the paper):
:meth:`BertClassifier.without_head` hides the head while such a backbone is loaded.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from megatron.core.models.bert.pooler import Pooler
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.utils import get_linear_layer

from megatron_evomoe.config import ModelConfig
from megatron_evomoe.models.bert import BertMoEModel, build_bert_model

HEAD_PREFIX = "classification_head."
_MLM_ONLY_MODULES = ("lm_head", "binary_head", "pooler")


class ClassificationHead(MegatronModule):
    """``[s, b, h]`` hidden states -> ``[b, num_outputs]`` logits from the first token."""

    def __init__(self, config: ModelConfig, num_outputs: int):
        super().__init__(config)
        self.pooler = Pooler(config.hidden_size, config.init_method, config, config.sequence_parallel)
        self.dropout = torch.nn.Dropout(config.hidden_dropout)
        self.projection = get_linear_layer(
            config.hidden_size, num_outputs, config.init_method, config.perform_initialization
        )

    def forward(self, hidden_sbh: torch.Tensor) -> torch.Tensor:
        return self.projection(self.dropout(self.pooler(hidden_sbh, 0)))


class BertClassifier(BertMoEModel):
    """BERT-MoE encoder + :class:`ClassificationHead` (module docstring).

    Args:
        config, spec, add_binary_head, pre_process, post_process, vp_stage: as BertMoEModel; the
            binary head is only built (frozen) when the pretrained model had one.
        num_outputs: classes of the task, 1 for regression.
    """

    def __init__(
        self,
        config: ModelConfig,
        spec,
        num_outputs: int,
        add_binary_head: bool = False,
        pre_process: bool = True,
        post_process: bool = True,
        vp_stage: Optional[int] = None,
    ):
        super().__init__(config, spec, add_binary_head, pre_process, post_process, vp_stage)
        self.num_outputs = num_outputs
        self._hide_head = False
        if post_process:
            self.classification_head = ClassificationHead(config, num_outputs)
            for name in _MLM_ONLY_MODULES:
                module = getattr(self, name, None)
                if module is not None:
                    module.requires_grad_(False)
            if self.output_layer.bias is not None:
                self.output_layer.bias.requires_grad_(False)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        tokentype_ids: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Hidden states on inner stages; ``[b, num_outputs]`` logits on the last stage."""
        hidden = self.encode(input_ids, attention_mask, tokentype_ids)
        if not self.post_process:
            return hidden
        return self.classification_head(hidden)

    @contextlib.contextmanager
    def without_head(self) -> Iterator[None]:
        """Within the block, the sharded state dict has no head: a backbone loads from any
        pretraining or fine-tuning checkpoint and the head keeps its fresh initialisation."""
        self._hide_head = True
        try:
            yield
        finally:
            self._hide_head = False

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        state = super().sharded_state_dict(prefix, sharded_offsets, metadata)
        if self._hide_head:
            state = {k: v for k, v in state.items() if not k.startswith(prefix + HEAD_PREFIX)}
        return state


def build_bert_classifier(
    config: ModelConfig,
    num_outputs: int,
    pre_process: bool = True,
    post_process: bool = True,
    add_binary_head: bool = False,
    vp_stage: Optional[int] = None,
) -> BertClassifier:
    """A classifier for this pipeline stage, every parameter (head included) drawn from the seed."""
    return build_bert_model(
        config, pre_process, post_process, add_binary_head, vp_stage,
        model_class=BertClassifier, num_outputs=num_outputs,
    )
