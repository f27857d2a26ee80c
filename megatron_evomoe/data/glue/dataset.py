"""GLUE examples -> fixed-length model inputs, in the layout the BERT pretraining samples use.

``[CLS] A [SEP]`` for single sentences and ``[CLS] A [SEP] B [SEP]`` for pairs (segment ids 0 / 1,
read only by models with token-type embeddings), right-padded to ``seq_length`` with the pad id.
Pairs that do not fit are truncated longest-first (one token at a time from the end of the longer
segment), as BERT's and RoBERTa's GLUE code does. Examples are tokenised when they are read, so a
large task (QQP, MNLI) costs no start-up time and DataLoader workers share the work.

Samples (torch tensors, ``s`` = seq_length)::

    tokens          [s] int64
    types           [s] int64
    attention_mask  [s] int64   1 for real tokens
    label           []  int64 class index, or float32 score (regression); 0 for unlabeled examples
    index           []  int64   position of the example in its file (predictions are put back in order)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch.utils.data import Dataset

from megatron_evomoe.data.glue.readers import GlueExample
from megatron_evomoe.errors import InputError


def truncate_pair(tokens_a: list[int], tokens_b: Optional[list[int]], max_tokens: int) -> None:
    """Shorten ``tokens_a`` (+ ``tokens_b``) in place to ``max_tokens`` together, longest first."""
    tokens_b = tokens_b if tokens_b is not None else []
    while len(tokens_a) + len(tokens_b) > max_tokens:
        (tokens_a if len(tokens_a) >= len(tokens_b) else tokens_b).pop()


def encode_example(
    tokenizer, example: GlueExample, seq_length: int
) -> tuple[list[int], list[int]]:
    """(token ids, segment ids) of ``[CLS] A [SEP] (B [SEP])``, at most ``seq_length`` long."""
    tokens_a = tokenizer.tokenize(example.text_a)
    tokens_b = tokenizer.tokenize(example.text_b) if example.text_b is not None else None
    specials = 3 if tokens_b is not None else 2
    truncate_pair(tokens_a, tokens_b, seq_length - specials)
    tokens = [tokenizer.cls, *tokens_a, tokenizer.sep]
    types = [0] * len(tokens)
    if tokens_b is not None:
        tokens += [*tokens_b, tokenizer.sep]
        types += [1] * (len(tokens_b) + 1)
    return tokens, types


class GlueDataset(Dataset):
    """Model inputs of a list of GLUE examples (module docstring).

    Args:
        examples: from ``readers``.
        tokenizer: with ``tokenize``, ``cls``, ``sep`` and ``pad``.
        seq_length: padded length (>= 3 for pairs, >= 2 otherwise).
        regression: labels are float scores.
    """

    def __init__(self, examples: Sequence[GlueExample], tokenizer, seq_length: int, regression: bool = False):
        if seq_length < 3:
            raise InputError(f"--seq-length must be >= 3 for GLUE inputs, got {seq_length}")
        self.examples = list(examples)
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        self.regression = regression
        self.pad_id = tokenizer.pad

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        tokens, types = encode_example(self.tokenizer, example, self.seq_length)
        padding = self.seq_length - len(tokens)
        label = example.label if example.label is not None else 0
        return {
            "tokens": torch.tensor(tokens + [self.pad_id] * padding, dtype=torch.int64),
            "types": torch.tensor(types + [0] * padding, dtype=torch.int64),
            "attention_mask": torch.tensor([1] * len(tokens) + [0] * padding, dtype=torch.int64),
            "label": torch.tensor(label, dtype=torch.float32 if self.regression else torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
        }


class EpochShuffledDataset(Dataset):
    """``epochs`` passes over ``dataset``, each in its own seeded order, cut to whole global batches.

    Sample ``i`` of the view is pass ``i // per_epoch``; the last incomplete global batch of each
    pass is dropped (as Megatron-LM's fine-tuning does), so every optimizer step sees a full batch.
    Indexing is a pure function of (seed, i): the micro-batch iterator of ``training/data_loading``
    runs over this view unchanged.
    """

    def __init__(self, dataset: Dataset, epochs: int, global_batch_size: int, seed: int):
        self.dataset = dataset
        self.steps_per_epoch = len(dataset) // global_batch_size
        if self.steps_per_epoch == 0:
            raise InputError(
                f"the training set has {len(dataset)} examples, fewer than one global batch "
                f"({global_batch_size}): lower --global-batch-size"
            )
        self.per_epoch = self.steps_per_epoch * global_batch_size
        self.epochs = epochs
        self.seed = seed
        self._cached_order: tuple[int, Optional[torch.Tensor]] = (-1, None)

    def __len__(self) -> int:
        return self.epochs * self.per_epoch

    def order(self, epoch: int) -> torch.Tensor:
        """The permutation of pass ``epoch`` (0-based); the latest one is kept (reads are sequential)."""
        if self._cached_order[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
            self._cached_order = (epoch, torch.randperm(len(self.dataset), generator=generator))
        return self._cached_order[1]

    def __getitem__(self, index: int) -> dict:
        epoch, position = divmod(index, self.per_epoch)
        return self.dataset[int(self.order(epoch)[position])]
