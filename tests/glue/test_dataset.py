"""GLUE example encoding ([CLS] A [SEP] B [SEP], longest-first truncation) and epoch shuffling."""

import pytest
import torch

from megatron_evomoe.data.glue.dataset import EpochShuffledDataset, GlueDataset, truncate_pair
from megatron_evomoe.data.glue.readers import GlueExample


class WordTokenizer:
    """One id per whitespace word (its length + 10); cls 1, sep 2, pad 0."""

    cls, sep, pad = 1, 2, 0

    def tokenize(self, text):
        return [10 + len(word) for word in text.split()]


def test_pair_layout_types_and_padding():
    data = GlueDataset([GlueExample("0", "a bb", "ccc", 1)], WordTokenizer(), seq_length=8)
    sample = data[0]
    assert sample["tokens"].tolist() == [1, 11, 12, 2, 13, 2, 0, 0]
    assert sample["types"].tolist() == [0, 0, 0, 0, 1, 1, 0, 0]
    assert sample["attention_mask"].tolist() == [1, 1, 1, 1, 1, 1, 0, 0]
    assert sample["label"].dtype == torch.int64 and int(sample["label"]) == 1
    assert int(sample["index"]) == 0


def test_single_sentence_truncation_and_regression_label():
    data = GlueDataset([GlueExample("5", "a b c d e f", None, 3.5)], WordTokenizer(), seq_length=5, regression=True)
    sample = data[0]
    assert sample["tokens"].tolist() == [1, 11, 11, 11, 2]
    assert sample["label"].dtype == torch.float32 and float(sample["label"]) == 3.5


def test_longest_first_truncation():
    a, b = list(range(6)), list(range(3))
    truncate_pair(a, b, 6)
    assert (a, b) == ([0, 1, 2], [0, 1, 2])
    a, b = [0, 1], list(range(5))
    truncate_pair(a, b, 4)
    assert (a, b) == ([0, 1], [0, 1])


def test_epoch_shuffling_drops_the_last_partial_batch():
    base = list(range(10))
    view = EpochShuffledDataset(base, epochs=3, global_batch_size=4, seed=5)
    assert (view.steps_per_epoch, len(view)) == (2, 24)
    epochs = [[view[e * 8 + i] for i in range(8)] for e in range(3)]
    for order in epochs:
        assert len(set(order)) == 8  # a permutation, cut to whole batches
    assert epochs[0] != epochs[1]
    again = EpochShuffledDataset(base, epochs=3, global_batch_size=4, seed=5)
    assert [again[i] for i in range(24)] == [x for order in epochs for x in order]
    with pytest.raises(ValueError, match="fewer than one global batch"):
        EpochShuffledDataset(base, epochs=1, global_batch_size=16, seed=0)
