"""GPT dataset provider: splits, blends, sample layout, vocabulary check, flags, torch.distributed."""

import argparse
import os
import shutil

import numpy as np
import pytest
import torch
from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.flags import add_data_args, add_tokenizer_args
from megatron_evomoe.data.gpt_dataset import GPTDataConfig, build_gpt_datasets, check_token_ids, data_config_from_args
from megatron_evomoe.data.tokenizer import build_tokenizer
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer
from tests.distributed import run_ranks

SEQ = 32


def config(tmp_path, **kwargs):
    return GPTDataConfig(seq_length=SEQ, data_cache_path=str(tmp_path / "cache"), **kwargs)


def num_documents(prefix):
    dataset = IndexedDataset(prefix)
    count = len(dataset.document_indices) - 1
    del dataset
    return count


def test_split_fractions_follow_documents(tmp_path, gpt_prefixes, bpe_tokenizer):
    prefix = gpt_prefixes[0]
    n = num_documents(prefix)
    train, valid, test = build_gpt_datasets(config(tmp_path, data_path=[prefix], split="8,1,1"), bpe_tokenizer,
                                            [None, None, None])
    bounds = [0, round(0.8 * n), round(0.9 * n), n]
    for dataset, begin, end in zip((train, valid, test), bounds, bounds[1:]):
        assert isinstance(dataset, GPTDataset)
        assert dataset.indices.tolist() == list(range(begin, end))
    assert len(train) > 8 * len(test) > 0


def test_samples_are_shifted_token_windows(tmp_path, gpt_prefixes, bpe_tokenizer):
    prefix = gpt_prefixes[0]
    train, _, _ = build_gpt_datasets(config(tmp_path, data_path=[prefix], split="1"), bpe_tokenizer, [64, 0, 0])
    # Oracle: the documents concatenated in the dataset's (shuffled) document order; sample j is the
    # seq_length + 1 window starting where megatron's sample index points.
    indexed = IndexedDataset(prefix)
    documents = [np.array(indexed[int(d)], dtype=np.int64) for d in train.document_index]
    del indexed
    starts = np.concatenate([[0], np.cumsum([len(d) for d in documents])])
    stream = np.concatenate(documents)
    assert len(train) >= 64
    for index in range(0, 64, 7):
        sample = train[index]
        assert sample["tokens"].shape == sample["labels"].shape == (SEQ,)
        assert sample["loss_mask"].shape == sample["position_ids"].shape == (SEQ,)
        assert "attention_mask" not in sample  # the model builds the causal mask itself
        assert torch.equal(sample["tokens"][1:], sample["labels"][:-1])
        assert torch.equal(sample["position_ids"], torch.arange(SEQ))
        assert bool(sample["loss_mask"].all())  # GPT-2 has no pad token: nothing is masked
        document_position, offset = train.sample_index[train.shuffle_index[index]]
        start = starts[document_position] + offset
        window = torch.cat([sample["tokens"], sample["labels"][-1:]]).numpy()
        assert np.array_equal(window, stream[start:start + SEQ + 1])


def test_weighted_blend_follows_weights(tmp_path, gpt_prefixes, bpe_tokenizer):
    a, b = gpt_prefixes
    train, valid, test = build_gpt_datasets(
        config(tmp_path, data_path=["0.7", a, "0.3", b], split="90,10,0"), bpe_tokenizer, [2000, 100, 0]
    )
    assert isinstance(train, BlendedDataset) and len(train) == 2000
    fractions = np.bincount(train.dataset_index, minlength=2) / len(train)
    assert np.allclose(fractions, [0.7, 0.3], atol=0.005)
    assert len(valid) == 100 and test is None  # split 0 for test
    assert train[5]["tokens"].shape == (SEQ,) and train[5]["dataset_id"] in (0, 1)


def test_blend_per_split(tmp_path, gpt_prefixes, bpe_tokenizer):
    a, b = gpt_prefixes
    cfg = config(tmp_path, train_data_path=[a], valid_data_path=["1", a, "3", b])
    train, valid, test = build_gpt_datasets(cfg, bpe_tokenizer, [100, 400, None])
    assert isinstance(train, GPTDataset) and train.indices.tolist() == list(range(num_documents(a)))
    assert isinstance(valid, BlendedDataset) and len(valid) == 400
    assert np.allclose(np.bincount(valid.dataset_index) / 400, [0.25, 0.75], atol=0.01)
    assert test is None


def test_empty_split_is_skipped_or_refused(tmp_path, gpt_prefixes, bpe_tokenizer):
    prefix = gpt_prefixes[0]
    assert num_documents(prefix) < 500  # so 1/1000 of the documents rounds to none
    cfg = config(tmp_path, data_path=[prefix], split="949,50,1")
    train, valid, test = build_gpt_datasets(cfg, bpe_tokenizer, [None, None, None])
    assert len(train) > 0 and len(valid) > 0 and test is None
    with pytest.raises(DataInputError, match="no documents in the test split .* but 5 test samples were requested"):
        build_gpt_datasets(cfg, bpe_tokenizer, [10, 10, 5])


def test_vocab_mismatch_names_the_prefix(tmp_path, corpus_path, gpt_prefixes):
    small = tmp_path / "tiny_tok"
    train_tokenizer(TokenizerTrainingConfig([corpus_path], str(small), vocab_size=300))
    tiny = build_tokenizer("GPT2BPETokenizer", str(small / "vocab.json"), str(small / "merges.txt"))
    prefix = str(tmp_path / "copy")
    for suffix in (".bin", ".idx", ".tokenizer.json"):
        shutil.copy(gpt_prefixes[0] + suffix, prefix + suffix)
    # The tokenizer record of tools/preprocess_data.py names both tokenizers ...
    with pytest.raises(DataInputError, match=f"data prefix '{prefix}' \\(--data-path\\) was tokenized with "
                                             "GPT2BPETokenizer \\(600 ids.*this run's tokenizer is GPT2BPETokenizer \\(300 ids"):
        build_gpt_datasets(config(tmp_path, data_path=[prefix]), tiny, [10, 1, 1])
    # ... and data without a record (older, or Megatron-LM's) is still scanned for impossible ids.
    os.remove(prefix + ".tokenizer.json")
    with pytest.raises(DataInputError, match=f"data prefix '{prefix}' \\(--data-path\\) contains token id \\d+, but "
                                             "the tokenizer has only 300 ids"):
        build_gpt_datasets(config(tmp_path, data_path=[prefix]), tiny, [10, 1, 1])
    prefix = gpt_prefixes[0]
    check_token_ids(prefix, 600, max_tokens=None)  # the real vocabulary passes a full scan
    check_token_ids(prefix, 300, max_tokens=0)  # nothing scanned, nothing found


def test_missing_prefix_files(tmp_path, bpe_tokenizer):
    with pytest.raises(DataInputError, match=r"data prefix 'nowhere/x' \(--train-data-path\): missing nowhere/x\.bin"):
        build_gpt_datasets(config(tmp_path, train_data_path=["nowhere/x"]), bpe_tokenizer, [1, None, None])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(), "no training data"),
        (dict(data_path=["a"], train_data_path=["b"]), "--data-path excludes"),
        (dict(data_path=[]), "--data-path was given without any data prefix"),
        (dict(data_path=["a"], split="90,x"), "--split must be"),
        (dict(data_path=["a"], split="0,0,0"), "--split must be"),
        (dict(data_path=["a"], split="1,1,1,1"), "--split must be"),
        (dict(data_path=["0.5", "a", "b"]), "weights and prefixes must alternate"),
        (dict(data_path=["-1", "a", "1", "b"]), "blend weights must be positive"),
        (dict(data_path=["a"], seq_length=0), "--seq-length must be >= 1"),
    ],
)
def test_config_validation(kwargs, message):
    kwargs.setdefault("seq_length", SEQ)
    with pytest.raises(ValueError, match=message):
        GPTDataConfig(**kwargs)


def test_weighted_blend_needs_sample_counts(tmp_path, gpt_prefixes, bpe_tokenizer):
    a, b = gpt_prefixes
    with pytest.raises(ValueError, match="a weighted blend needs a number of valid samples"):
        build_gpt_datasets(config(tmp_path, data_path=["1", a, "1", b]), bpe_tokenizer, [10, None, 0])


def test_flags_map_to_config():
    parser = argparse.ArgumentParser()
    add_tokenizer_args(parser)
    add_data_args(parser)
    parser.add_argument("--seq-length", type=int)
    args = parser.parse_args(["--data-path", "0.7", "A", "0.3", "B", "--split", "98,2,0", "--seq-length", "64",
                              "--no-mmap-bin-files", "--eod-mask-loss", "--tokenizer-type", "GPT2BPETokenizer"])
    cfg = data_config_from_args(args)
    assert cfg.blend() == (["A", "B"], [0.7, 0.3]) and cfg.blend_per_split() is None
    assert (cfg.split, cfg.seq_length, cfg.mmap_bin_files, cfg.eod_mask_loss) == ("98,2,0", 64, False, True)
    assert cfg.seed == 1234 and args.num_workers == 0 and args.data_cache_path is None
    per_split = data_config_from_args(parser.parse_args(["--train-data-path", "A", "--seq-length", "8"]))
    assert per_split.blend() is None and per_split.blend_per_split() == [(["A"], None), None, None]
    # The [s, s] mask is only built when it carries document boundaries.
    assert cfg.create_attention_mask is False
    reset = data_config_from_args(parser.parse_args(["--data-path", "A", "--seq-length", "8", "--reset-attention-mask"]))
    assert reset.reset_attention_mask and reset.create_attention_mask


def _build_on_rank(vocab_file, merge_file, prefix_a, prefix_b, cache):
    """One gloo rank: build a cached weighted blend; report what it sees."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        tokenizer = build_tokenizer("GPT2BPETokenizer", vocab_file, merge_file)
        cfg = GPTDataConfig(seq_length=16, data_path=["0.6", prefix_a, "0.4", prefix_b], split="90,10,0",
                            data_cache_path=cache)
        train, valid, test = build_gpt_datasets(cfg, tokenizer, [200, 20, 0])
        return len(train), len(valid), test, train[3]["tokens"].tolist()
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(240)
def test_builds_with_torch_distributed_initialised(tmp_path, gpt_prefixes, bpe_spec):
    cache = str(tmp_path / "cache")
    rank0, rank1 = run_ranks(_build_on_rank, 2, bpe_spec.vocab_file, bpe_spec.merge_file, *gpt_prefixes, cache,
                             timeout=200)
    assert rank0 == rank1  # rank 0 builds the caches, rank 1 reads them: same datasets
    assert rank0[:3] == (200, 20, None)
    assert any(name.endswith("BlendedDataset-train-dataset_index.npy") for name in os.listdir(cache))
