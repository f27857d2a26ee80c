"""The BERT/RoBERTa dataset provider: .bin/.idx prefixes -> megatron.core's masked BERT dataset.

We configure megatron.core's ``BERTMaskedWordPieceDataset`` (through ``BlendedMegatronDatasetBuilder``)
rather than re-implementing sampling and masking, so sample packing, masking and index caches are
Megatron-LM's. Masking is decided per *sample index* (``RandomState(seed + index)``) and the sample
index runs over as many passes of the documents as the run needs, so each pass over the data draws
new masks (RoBERTa's dynamic masking). RoBERTa defaults: no binary head, 15% of tokens chosen
(single tokens, not n-grams), of which 80% become the mask token, 10% a random token, 10% unchanged;
full-length samples (``short_seq_prob`` 0).

Samples (``dataset[i]``, torch tensors; ``s`` = --seq-length)::

    tokens          [s] int64  [CLS] A [SEP] (B [SEP]) then padding, masked positions replaced
    types           [s] int64  0 for [CLS] A [SEP], 1 for B [SEP] (only read with the binary head)
    labels          [s] int64  original token at masked positions, 0 elsewhere
    loss_mask       [s] float  1 at masked positions
    attention_mask  [s] int64  1 for real tokens, 0 for padding
    is_random       []  int64  binary-head label (B is not A's continuation / the order is swapped)

What this module adds around megatron:

* padding is marked with a sentinel id instead of the tokenizer's pad id: megatron.core 0.16.1 writes
  the pad *id* into its padding mask (only right for pad id 0) and treats any real token equal to the
  pad id (e.g. a random replacement drawing ``[PAD]``) as padding;
* a check that every split that must give samples has documents megatron can use. Its sample-index
  builder skips documents with fewer sentences than a sample needs (2 with the binary head) and
  multi-sentence documents holding a sentence of more than 512 tokens, and with no usable
  document it never terminates; we raise a clear error instead (usually: preprocess with
  ``--split-sentences``).

Building needs ``torch.distributed`` to be initialised (megatron builds index caches on rank 0).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from megatron.core.datasets.bert_dataset import BERTMaskedWordPieceDataset, BERTMaskedWordPieceDatasetConfig
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.utils import Split

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.gpt_dataset import GPTDataConfig, require_data

logger = logging.getLogger(__name__)

LONG_SENTENCE_TOKENS = 512
"""megatron's sample-index builder skips multi-sentence documents with a longer sentence."""

_PAD_SENTINEL = -1
"""Pads the sample before we replace it with the real pad id; no token id can equal it."""


@dataclass
class BertDataConfig:
    """Where the BERT training data is and how samples are drawn and masked."""

    sources: GPTDataConfig
    """The prefixes, split, cache directory, seed and mmap setting: the same flags (--data-path,
    --split, --data-cache-path, ...) and validation as the GPT provider."""

    mask_prob: float = 0.15
    """Fraction of tokens chosen for prediction (--mask-prob)."""

    short_seq_prob: float = 0.0
    """Probability of a shorter target length for a sample (--short-seq-prob; BERT used 0.1,
    RoBERTa always fills the sequence)."""

    binary_head: bool = False
    """Samples of two segments with a random-swap label for the NSP/SOP head (--bert-binary-head)."""

    whole_word_masking: bool = False
    """Mask every piece of a WordPiece word together (--mask-whole-words; WordPiece only)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.mask_prob < 1.0:
            raise DataInputError(f"--mask-prob must be in (0, 1), got {self.mask_prob}")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise DataInputError(f"--short-seq-prob must be in [0, 1], got {self.short_seq_prob}")
        if self.sources.seq_length < 5:
            raise DataInputError(f"--seq-length must be >= 5 for BERT samples, got {self.sources.seq_length}")

    @property
    def min_sentences(self) -> int:
        """Sentences a document needs to give a sample."""
        return 2 if self.binary_head else 1


def bert_data_config(sources: Optional[GPTDataConfig], options) -> BertDataConfig:
    """The BERT data config from the data flags (``RunConfig.data``) and the BERT flags
    (``RunConfig.bert``, a ``bert_arguments.BertOptions``)."""
    return BertDataConfig(
        sources=require_data(sources),
        mask_prob=options.mask_prob,
        short_seq_prob=options.short_seq_prob,
        binary_head=options.binary_head,
        whole_word_masking=options.mask_whole_words,
    )


class BertMLMDataset(BERTMaskedWordPieceDataset):
    """megatron's masked BERT dataset with a sentinel pad and torch samples (module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad_id = self.config.tokenizer.pad
        self._pad_token_id = _PAD_SENTINEL

    def __getitem__(self, idx: int) -> dict:
        sample = super().__getitem__(idx)
        real = torch.from_numpy(sample["padding_mask"] == 1)
        tokens = torch.from_numpy(sample["text"]).masked_fill(~real, self.pad_id)
        return {
            "tokens": tokens,
            "types": torch.from_numpy(sample["types"]).masked_fill(~real, 0),
            "labels": torch.from_numpy(sample["labels"]).clamp(min=0),
            "loss_mask": torch.from_numpy(sample["loss_mask"]).float(),
            "attention_mask": real.long(),
            "is_random": torch.tensor(sample["is_random"], dtype=torch.int64),
        }


def build_bert_datasets(
    config: BertDataConfig,
    tokenizer,
    train_valid_test_num_samples: Sequence[Optional[int]],
    is_built_on_rank: Optional[Callable[[], bool]] = None,
) -> tuple[Optional[torch.utils.data.Dataset], ...]:
    """Build the train, valid and test masked-LM datasets.

    Args:
        config: the data config.
        tokenizer: a tokenizer with ``cls``, ``sep``, ``mask``, ``pad`` (``data/mlm_tokenizer.py``
            adds the ones a BPE vocabulary lacks), ``inv_vocab`` and ``unique_identifiers``.
        train_valid_test_num_samples: samples per split; 0 skips a split; None = one pass.
        is_built_on_rank: megatron's contract (default: every rank builds).

    Returns:
        (train, valid, test), each a dataset or None.

    Raises:
        DataInputError: missing files, token ids beyond the vocabulary, or a split that must give
            samples but has no usable document.
    """
    sources = config.sources
    sizes = [None if n is None else int(n) for n in train_valid_test_num_samples]
    if len(sizes) != len(Split):
        raise ValueError(f"train_valid_test_num_samples needs 3 entries, got {sizes}")
    sources.check_files(tokenizer)
    bert_config = BERTMaskedWordPieceDatasetConfig(
        **sources.megatron_config_kwargs(tokenizer),
        masking_probability=config.mask_prob,
        short_sequence_probability=config.short_seq_prob,
        masking_max_ngram=1,
        masking_do_full_word=config.whole_word_masking,
        masking_do_permutation=False,
        masking_use_longer_ngrams=False,
        masking_use_geometric_distribution=False,
        classification_head=config.binary_head,
    )
    _check_usable_documents(bert_config, config, sizes)
    builder = BlendedMegatronDatasetBuilder(BertMLMDataset, sizes, is_built_on_rank or (lambda: True), bert_config)
    return tuple(builder.build())


@dataclass
class DocumentCensus:
    """How many documents of a split megatron's sample builder can use, and why others are skipped."""

    num_documents: int
    usable: int
    empty: int
    too_few_sentences: int
    long_sentence: int


def document_census(prefix: str, bookends: tuple[float, float], min_sentences: int) -> DocumentCensus:
    """Count the usable documents of ``prefix`` in the split ``[begin, end)`` (fractions of its
    documents, rounded as megatron rounds them), with megatron's rules (module docstring)."""
    dataset = IndexedDataset(prefix)
    doc_index = np.array(dataset.document_indices, dtype=np.int64)
    lengths = np.array(dataset.sequence_lengths, dtype=np.int64)
    del dataset
    num_docs = len(doc_index) - 1
    begin, end = (int(round(b * float(num_docs))) for b in bookends)
    starts, stops = doc_index[begin:end], doc_index[begin + 1 : end + 1]
    sentences = stops - starts
    longest = np.zeros(len(starts), dtype=np.int64)
    nonempty = sentences > 0
    if nonempty.any():
        # Between two non-empty documents' starts lie exactly the first one's sentences.
        longest[nonempty] = np.maximum.reduceat(lengths[: stops[nonempty][-1]], starts[nonempty])
    has_long = (sentences > 1) & (longest > LONG_SENTENCE_TOKENS)
    enough = sentences >= max(min_sentences, 1)
    return DocumentCensus(
        num_documents=len(starts),
        usable=int(np.sum(enough & ~has_long)),
        empty=int(np.sum(sentences == 0)),
        too_few_sentences=int(np.sum(~enough & (sentences > 0))),
        long_sentence=int(np.sum(enough & has_long)),
    )


def _check_usable_documents(bert_config, config: BertDataConfig, sizes: list) -> None:
    """Skip splits that want no samples; raise for a split that wants samples but has no usable
    document (megatron's builder would loop forever); log documents skipped for long sentences."""
    sources = config.sources
    for split in Split:
        if sources.data_path is not None:
            bookends = bert_config.split_matrix[split.value]
            prefixes = bert_config.blend[0]
            flag = "--data-path"
        else:
            blend = bert_config.blend_per_split[split.value]
            bookends, prefixes = (0.0, 1.0), (blend[0] if blend else [])
            flag = f"--{split.name}-data-path"
        if bookends is None or not prefixes:
            continue
        if sizes[split.value] == 0:
            if sources.data_path is not None:
                bert_config.split_matrix[split.value] = None
            else:
                bert_config.blend_per_split[split.value] = None
            continue
        for prefix in prefixes:
            census = document_census(prefix, bookends, config.min_sentences)
            if census.long_sentence:
                logger.warning(
                    "%s: %d of %d %s documents hold a sentence of more than %d tokens and are skipped",
                    prefix, census.long_sentence, census.num_documents, split.name, LONG_SENTENCE_TOKENS,
                )
            if census.usable == 0:
                raise DataInputError(
                    f"data prefix {prefix!r} ({flag}) has no document usable for BERT samples in the "
                    f"{split.name} split: {census.num_documents} documents, {census.empty} empty, "
                    f"{census.too_few_sentences} with fewer than {config.min_sentences} sentence(s), "
                    f"{census.long_sentence} with a sentence of more than {LONG_SENTENCE_TOKENS} tokens; "
                    "preprocess with tools/preprocess_data.py --split-sentences"
                    + (" (the binary head needs 2+ sentences per document)" if config.binary_head else "")
                    + (f", or change --split {sources.split}" if sources.data_path is not None else "")
                )
