"""Data that does not belong to the run is refused at start-up with one line naming the file:
a .bin/.idx pair from two datasets or truncated, and data tokenized by another tokenizer."""

import hashlib
import json
import logging
import os
import re
import shutil

import pytest

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.gpt_dataset import GPTDataConfig, build_gpt_datasets
from megatron_evomoe.data.mlm_tokenizer import with_mlm_special_tokens
from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
from megatron_evomoe.data.tokenizer import TokenizerSpec
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer

from tests.data.conftest import SMALL_VOCAB


def _build(tmp_path, prefix, tokenizer):
    config = GPTDataConfig(seq_length=32, data_path=[prefix], split="1", data_cache_path=str(tmp_path / "cache"))
    return build_gpt_datasets(config, tokenizer, [8, 0, 0])


def _copy(source_prefix, target_prefix, suffixes=(".bin", ".idx", ".tokenizer.json")):
    for suffix in suffixes:
        shutil.copy(source_prefix + suffix, target_prefix + suffix)
    return target_prefix


@pytest.fixture(scope="module")
def small_prefix(tmp_path_factory, small_corpus_path, bpe_spec):
    """The 20-document corpus preprocessed with the BPE tokenizer (another dataset than gpt_prefixes)."""
    config = PreprocessConfig([small_corpus_path], str(tmp_path_factory.mktemp("small") / "s"), bpe_spec, append_eod=True)
    preprocess_data(config)
    return config.output_prefix_for("text")


@pytest.fixture(scope="module")
def wordpiece_spec(tmp_path_factory, corpus_path):
    """A WordPiece vocabulary of the same size as the BPE one: its ids fit the BPE data and vice versa."""
    out = tmp_path_factory.mktemp("wp")
    train_tokenizer(TokenizerTrainingConfig([corpus_path], str(out), model_type="wordpiece", lowercase=True,
                                            vocab_size=SMALL_VOCAB))
    return TokenizerSpec("BertWordPieceLowerCase", os.path.join(out, "vocab.txt"))


def test_preprocessing_records_its_tokenizer(gpt_prefixes, bpe_dir):
    record = json.load(open(gpt_prefixes[0] + ".tokenizer.json"))
    vocab = json.load(open(os.path.join(bpe_dir, "vocab.json")))  # token -> id, the tokenizer's own file
    tokens_by_id = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    expected = hashlib.sha256(json.dumps(tokens_by_id, ensure_ascii=False).encode("utf-8")).hexdigest()
    assert record == {"tokenizer_type": "GPT2BPETokenizer", "vocab_size": len(vocab), "vocab_sha256": expected}


def test_wordpiece_tokenizer_on_bpe_data_is_refused(tmp_path, gpt_prefixes, wordpiece_spec, bpe_tokenizer):
    prefix = gpt_prefixes[0]
    wordpiece = wordpiece_spec.build()
    assert wordpiece.vocab_size == bpe_tokenizer.vocab_size  # the token-id range check cannot tell them apart
    with pytest.raises(DataInputError) as error:
        _build(tmp_path, prefix, wordpiece)
    assert str(error.value).startswith(
        f"data prefix '{prefix}' (--data-path) was tokenized with GPT2BPETokenizer ({SMALL_VOCAB} ids"
    )
    assert f"this run's tokenizer is BertWordPieceLowerCase ({SMALL_VOCAB} ids" in str(error.value)
    assert "\n" not in str(error.value)
    # RoBERTa-style special ids appended after the BPE vocabulary still fit the data.
    assert _build(tmp_path, prefix, with_mlm_special_tokens(bpe_tokenizer))[0] is not None


def test_bpe_tokenizer_on_wordpiece_data_is_refused(tmp_path, small_corpus_path, wordpiece_spec, bpe_tokenizer):
    config = PreprocessConfig([small_corpus_path], str(tmp_path / "wp"), wordpiece_spec, append_eod=True)
    preprocess_data(config)
    prefix = config.output_prefix_for("text")
    with pytest.raises(DataInputError, match="was tokenized with BertWordPieceLowerCase .* this run's tokenizer is "
                                             "GPT2BPETokenizer"):
        _build(tmp_path, prefix, bpe_tokenizer)
    assert _build(tmp_path, prefix, wordpiece_spec.build())[0] is not None


def test_data_without_a_tokenizer_record_loads_with_a_note(tmp_path, gpt_prefixes, bpe_tokenizer, caplog):
    prefix = _copy(gpt_prefixes[0], str(tmp_path / "legacy"), (".bin", ".idx"))
    with caplog.at_level(logging.WARNING):
        assert _build(tmp_path, prefix, bpe_tokenizer)[0] is not None
    notes = [r.getMessage() for r in caplog.records if "tokenizer.json" in r.getMessage()]
    assert notes == [f"note: {prefix} has no .tokenizer.json (written before it existed): its tokenizer is not checked"]


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("idx_header", r"{p}\.idx is truncated \(20 bytes\)"),
        ("idx_body", r"{p}\.idx is truncated: 100 bytes, its header announces \d+ sequences and \d+ documents"),
        ("bin_truncated", r"{p}\.bin has 1000 bytes but {p}\.idx indexes \d+: the \.bin is truncated, or the two "
                          r"files come from different datasets"),
        ("bin_of_other", r"{p}\.bin has \d+ bytes but {p}\.idx indexes \d+"),
        ("idx_of_other", r"{p}\.bin has \d+ bytes but {p}\.idx indexes \d+"),
    ],
)
def test_bin_and_idx_that_do_not_belong_together_name_the_file(
    tmp_path, gpt_prefixes, small_prefix, bpe_tokenizer, damage, message
):
    prefix = _copy(gpt_prefixes[0], str(tmp_path / "data"))
    if damage == "idx_header":
        _truncate(prefix + ".idx", 20)
    elif damage == "idx_body":
        _truncate(prefix + ".idx", 100)
    elif damage == "bin_truncated":
        _truncate(prefix + ".bin", 1000)
    elif damage == "bin_of_other":
        shutil.copy(small_prefix + ".bin", prefix + ".bin")
    else:
        shutil.copy(small_prefix + ".idx", prefix + ".idx")
    with pytest.raises(DataInputError) as error:
        _build(tmp_path, prefix, bpe_tokenizer)
    text = str(error.value)
    assert text.startswith(f"data prefix '{prefix}' (--data-path): ") and "\n" not in text
    assert re.search(message.format(p=re.escape(prefix)), text), text
