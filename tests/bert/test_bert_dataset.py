"""The BERT dataset provider: sample format, RoBERTa masking (15%, 80/10/10, redrawn per pass),
padding with any pad id, binary-head segments, and a clear error where megatron would hang."""

import collections
import os

import numpy as np
import pytest
import torch

from megatron_evomoe.data.bert_dataset import BertDataConfig, build_bert_datasets, document_census
from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.gpt_dataset import GPTDataConfig
from megatron_evomoe.data.mlm_tokenizer import MLMTokenizer
from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
from megatron_evomoe.data.tokenizer import TokenizerSpec, build_tokenizer
from tests.bert.toy_data import build_toy_bert_data

SEQ = 32


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return build_toy_bert_data(str(tmp_path_factory.mktemp("bert_data")))


@pytest.fixture(scope="module")
def tokenizer(toy):
    return build_tokenizer("BertWordPieceLowerCase", toy["vocab"])


def _build(toy, tokenizer, sizes, **options):
    sources = GPTDataConfig(seq_length=SEQ, data_path=[toy["prefix"]], split="90,10,0", seed=3)
    return build_bert_datasets(BertDataConfig(sources, **options), tokenizer, sizes)


def test_sample_format(megatron_world_of_one, toy, tokenizer):
    train, valid, test = _build(toy, tokenizer, [300, 40, 0])
    assert len(train) >= 300 and len(valid) >= 40 and test is None
    sample = train[0]
    assert {k: (v.dtype, tuple(v.shape)) for k, v in sample.items()} == {
        "tokens": (torch.int64, (SEQ,)), "types": (torch.int64, (SEQ,)), "labels": (torch.int64, (SEQ,)),
        "loss_mask": (torch.float32, (SEQ,)), "attention_mask": (torch.int64, (SEQ,)), "is_random": (torch.int64, ()),
    }
    for i in range(50):
        sample = train[i]
        length = int(sample["attention_mask"].sum())
        assert sample["attention_mask"][:length].all() and not sample["attention_mask"][length:].any()
        tokens = sample["tokens"]
        assert tokens[0] == tokenizer.cls and tokens[length - 1] == tokenizer.sep
        assert (tokens[length:] == tokenizer.pad).all()
        assert not sample["types"].any()  # RoBERTa-style: one segment
        masked = sample["loss_mask"].bool()
        assert masked.any() and not masked[length:].any() and not masked[[0, length - 1]].any()
        assert (sample["labels"][~masked] == 0).all()


def test_masking_rate_and_80_10_10(megatron_world_of_one, toy, tokenizer):
    train, _, _ = _build(toy, tokenizer, [600, 0, 0])
    chosen = candidates = 0
    kinds = collections.Counter()
    for i in range(600):
        sample = train[i]
        length = int(sample["attention_mask"].sum())
        candidates += length - 2  # [CLS] and [SEP] are never chosen
        masked = sample["loss_mask"].bool()
        chosen += int(masked.sum())
        for token, label in zip(sample["tokens"][masked].tolist(), sample["labels"][masked].tolist()):
            kinds["mask" if token == tokenizer.mask else "kept" if token == label else "random"] += 1
    assert chosen / candidates == pytest.approx(0.15, abs=0.02)
    total = sum(kinds.values())
    assert kinds["mask"] / total == pytest.approx(0.8, abs=0.03)
    # a random replacement can draw the original token, so "kept" is a bit above 10%
    assert kinds["random"] / total == pytest.approx(0.1, abs=0.03)
    assert kinds["kept"] / total == pytest.approx(0.1, abs=0.03)


def test_masks_are_redrawn_on_every_pass(megatron_world_of_one, toy, tokenizer):
    train, _, _ = _build(toy, tokenizer, [2000, 0, 0])  # several passes over the ~200 documents
    by_segment = collections.defaultdict(list)
    for index, (begin, end, _) in enumerate(np.asarray(train.sample_index)):
        by_segment[(int(begin), int(end))].append(index)
    same_text = differ = 0
    for indices in by_segment.values():
        if len(indices) < 2:
            continue
        a, b = train[indices[0]], train[indices[1]]
        if not torch.equal(_original(a), _original(b)):
            continue  # a long segment may be trimmed differently on another pass
        same_text += 1
        differ += not torch.equal(a["loss_mask"], b["loss_mask"])
    assert same_text >= 20
    assert differ >= 0.8 * same_text


def _original(sample):
    """The unmasked token sequence of a sample."""
    return torch.where(sample["loss_mask"].bool(), sample["labels"], sample["tokens"])


def test_binary_head_segments_and_non_zero_pad_id(megatron_world_of_one, toy, tokenizer):
    # A pad id that is not 0 (as with the ids added to a BPE vocabulary): megatron's own padding mask
    # only works for pad id 0; ours must not care.
    shifted = MLMTokenizer(tokenizer, {"pad": tokenizer.vocab_size})
    train, _, _ = _build(toy, shifted, [200, 0, 0], binary_head=True)
    swapped = 0
    for i in range(100):
        sample = train[i]
        length = int(sample["attention_mask"].sum())
        assert (sample["tokens"][length:] == shifted.pad).all() and (sample["tokens"][:length] != shifted.pad).all()
        types = sample["types"][:length].tolist()
        boundary = types.index(1)
        assert types == [0] * boundary + [1] * (length - boundary) and sample["tokens"][boundary - 1] == shifted.sep
        swapped += int(sample["is_random"])
    assert 25 <= swapped <= 75


def test_unusable_documents_raise_instead_of_hanging(megatron_world_of_one, toy, tokenizer, tmp_path):
    # Without --split-sentences each document is one sequence: the binary head needs two.
    spec = TokenizerSpec("BertWordPieceLowerCase", toy["vocab"])
    corpus = os.path.join(os.path.dirname(toy["prefix"]), "corpus.jsonl")
    config = PreprocessConfig([corpus], str(tmp_path / "doc"), spec)
    preprocess_data(config)
    prefix = config.output_prefix_for("text")
    census = document_census(prefix, (0.0, 1.0), 2)
    assert (census.usable, census.too_few_sentences) == (0, 200)
    sources = GPTDataConfig(seq_length=SEQ, data_path=[prefix], split="90,10,0")
    with pytest.raises(DataInputError, match=r"no document usable .* train split.*--split-sentences"):
        build_bert_datasets(BertDataConfig(sources, binary_head=True), tokenizer, [10, 0, 0])
    # MLM only: one-sentence documents are fine
    train, _, _ = build_bert_datasets(BertDataConfig(sources), tokenizer, [10, 0, 0])
    assert len(train) >= 10
