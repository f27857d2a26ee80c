"""Tokenizer training writes Megatron-LM files that build_tokenizer loads for every tokenizer type."""

import json
import os
import pickle

import pytest
import regex

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.pydoc_corpus import pydoc_documents
from megatron_evomoe.data.tokenizer import (
    BERT_SPECIAL_TOKENS,
    FastTokenizer,
    MissingSpecialTokenError,
    build_tokenizer,
    padded_vocab_size,
)
from megatron_evomoe.data.tokenizer_training import TokenizerTrainingConfig, train_tokenizer
from tests.data.conftest import SMALL_VOCAB, load_tool, run_tool

TEXTS = [d["text"] for d in pydoc_documents()]
SAMPLE = "Hello World — naïve café, 日本語 and tabs\t\tand  spaces.\n\nThe END 123 (x) {y}"


def gpt2_reference_encode(text, vocab, merges):
    """GPT-2's original byte-level BPE (the algorithm of Megatron-LM's GPT2BPETokenizer), as the oracle."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    codes, extra = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    byte_to_char = {b: chr(c) for b, c in zip(printable, codes)}
    ranks = {pair: i for i, pair in enumerate(merges)}
    pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    ids = []
    for piece in pattern.findall(text):
        word = tuple(byte_to_char[b] for b in piece.encode("utf-8"))
        while len(word) > 1:
            pair = min(zip(word, word[1:]), key=lambda p: ranks.get(p, float("inf")))
            if pair not in ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == pair:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        ids.extend(vocab[token] for token in word)
    return ids


def test_bpe_files_are_megatron_gpt2_format(bpe_dir):
    vocab = json.load(open(os.path.join(bpe_dir, "vocab.json"), encoding="utf-8"))
    lines = open(os.path.join(bpe_dir, "merges.txt"), encoding="utf-8").read().split("\n")
    assert lines[0].startswith("#version") and lines[-1] == ""
    merges = [tuple(line.split()) for line in lines[1:-1]]  # exactly how Megatron-LM reads merges.txt
    assert all(len(m) == 2 for m in merges)
    assert len(vocab) == SMALL_VOCAB and "<|endoftext|>" in vocab

    tokenizer = build_tokenizer(
        "GPT2BPETokenizer", os.path.join(bpe_dir, "vocab.json"), os.path.join(bpe_dir, "merges.txt")
    )
    assert tokenizer.vocab_size == SMALL_VOCAB
    assert tokenizer.eod == vocab["<|endoftext|>"]
    for text in TEXTS[:25] + [SAMPLE]:
        assert tokenizer.tokenize(text) == gpt2_reference_encode(text, vocab, merges)
        assert tokenizer.detokenize(tokenizer.tokenize(text)) == text


def test_bpe_tokenizer_json_agrees_with_megatron_files(bpe_dir, bpe_tokenizer):
    hf = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=bpe_dir)  # a directory works too
    assert hf.vocab_size == bpe_tokenizer.vocab_size and hf.eod == bpe_tokenizer.eod
    for text in TEXTS[:10] + [SAMPLE]:
        assert hf.tokenize(text) == bpe_tokenizer.tokenize(text)


def test_gpt2_tokenizer_properties(bpe_tokenizer):
    assert isinstance(bpe_tokenizer.unique_identifiers, dict)
    assert bpe_tokenizer.unique_identifiers["tokenizer_type"] == "GPT2BPETokenizer"
    assert bpe_tokenizer.inv_vocab[bpe_tokenizer.eod] == "<|endoftext|>"
    assert bpe_tokenizer.vocab["<|endoftext|>"] == bpe_tokenizer.eod
    with pytest.raises(MissingSpecialTokenError, match="no pad token"):
        bpe_tokenizer.pad
    assert isinstance(MissingSpecialTokenError("x"), NotImplementedError)  # what megatron's datasets probe for
    clone = pickle.loads(pickle.dumps(bpe_tokenizer))  # DataLoader workers pickle datasets holding it
    assert clone.tokenize(SAMPLE) == bpe_tokenizer.tokenize(SAMPLE)


@pytest.mark.parametrize("lowercase", [True, False])
def test_wordpiece_files_load_as_bert_types(tmp_path, corpus_path, lowercase):
    result = train_tokenizer(
        TokenizerTrainingConfig(
            [corpus_path], str(tmp_path), model_type="wordpiece", vocab_size=800, lowercase=lowercase
        )
    )
    vocab_txt = os.path.join(str(tmp_path), "vocab.txt")
    assert result.files["vocab_file"] == vocab_txt
    lines = open(vocab_txt, encoding="utf-8").read().splitlines()
    tokenizer_type = "BertWordPieceLowerCase" if lowercase else "BertWordPieceCase"
    assert result.tokenizer_type == tokenizer_type
    tokenizer = build_tokenizer(tokenizer_type, vocab_file=vocab_txt)
    assert tokenizer.vocab_size == len(lines) == 800
    for role, token in BERT_SPECIAL_TOKENS.items():
        assert getattr(tokenizer, role) == lines.index(token)
    assert tokenizer.eod == tokenizer.sep
    same_when_lowered = tokenizer.tokenize("The Function") == tokenizer.tokenize("the function")
    assert same_when_lowered == lowercase
    hf = build_tokenizer("HuggingFaceTokenizer", tokenizer_model=result.files["tokenizer_json"])
    assert hf.mask == tokenizer.mask and hf.cls == tokenizer.cls and hf.pad == tokenizer.pad
    for text in TEXTS[:5]:
        assert hf.tokenize(text) == tokenizer.tokenize(text)


def test_train_tokenizer_cli_on_plain_text(tmp_path):
    text_file = tmp_path / "corpus.txt"
    text_file.write_text("\n".join(t.replace("\n", " ") for t in TEXTS[:30]) + "\n", encoding="utf-8")
    out = tmp_path / "tok"
    done = run_tool("train_tokenizer.py", "--input", text_file, "--type", "wordpiece", "--lowercase",
                    "--vocab-size", 500, "--output-dir", out)
    assert done.returncode == 0, done.stderr
    assert "trained BertWordPieceLowerCase tokenizer: vocab 500 from 30 documents" in done.stdout
    assert build_tokenizer("BertWordPieceLowerCase", vocab_file=str(out / "vocab.txt")).vocab_size == 500



def test_train_tokenizer_cli_user_error_is_one_line(tmp_path, capsys):
    main = load_tool("train_tokenizer.py").main
    missing = str(tmp_path / "nope.jsonl")
    assert main(["--input", missing, "--vocab-size", "500", "--output-dir", str(tmp_path / "tok")]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"train_tokenizer.py: error: --input '{missing}': no such file or directory"
    ]
    assert main(["--input", missing, "--vocab-size", "5", "--output-dir", str(tmp_path / "tok")]) == 1
    assert "--vocab-size must be >= 257" in capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(model_type="bpe", lowercase=True), "--lowercase applies to --type wordpiece only"),
        (dict(model_type="bpe", vocab_size=100), "--vocab-size must be >= 257"),
        (dict(model_type="unigram"), "--type must be one of"),
        (dict(min_frequency=0), "--min-frequency must be >= 1"),
    ],
)
def test_training_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TokenizerTrainingConfig(["x.jsonl"], "out", **kwargs)


def test_missing_or_bad_tokenizer_files_name_flag_and_path(tmp_path, bpe_dir):
    vocab, merges = os.path.join(bpe_dir, "vocab.json"), os.path.join(bpe_dir, "merges.txt")
    missing = str(tmp_path / "missing.json")
    cases = [
        (("GPT2BPETokenizer", missing, merges), f"--vocab-file '{missing}': no such file"),
        (("GPT2BPETokenizer", vocab, missing), f"--merge-file '{missing}': no such file"),
        (("GPT2BPETokenizer", None, merges), "GPT2BPETokenizer needs --vocab-file"),
        (("BertWordPieceCase", None), "BertWordPieceCase needs --vocab-file"),
        (("HuggingFaceTokenizer", None, None, missing), f"--tokenizer-model '{missing}': no such file"),
        ((None,), "--tokenizer-type is required"),
        (("SentencePieceTokenizer",), "--tokenizer-type 'SentencePieceTokenizer' is not supported"),
    ]
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    cases.append((("GPT2BPETokenizer", str(bad_json), merges), f"--vocab-file '{bad_json}': not a GPT-2 vocab.json"))
    no_specials = tmp_path / "vocab.txt"
    no_specials.write_text("[UNK]\na\nb\n")
    cases.append((("BertWordPieceLowerCase", str(no_specials)), "missing BERT special tokens [PAD] [CLS] [SEP] [MASK]"))
    for args, message in cases:
        with pytest.raises(DataInputError) as err:
            build_tokenizer(*args)
        assert isinstance(err.value, ValueError) and message in str(err.value), (args, str(err.value))


def test_padded_vocab_size():
    assert padded_vocab_size(50257) == 50304
    assert padded_vocab_size(50257, 128, 2) == 50432
    assert padded_vocab_size(4096) == 4096
    assert padded_vocab_size(600, 8, 1) == 600
    assert padded_vocab_size(601, 8, 3) == 624
    with pytest.raises(ValueError, match="tensor_model_parallel_size must be a positive integer"):
        padded_vocab_size(100, 128, 0)


def test_fast_tokenizer_is_a_megatron_tokenizer(bpe_tokenizer):
    from megatron.core.tokenizers import MegatronTokenizerBase

    assert isinstance(bpe_tokenizer, FastTokenizer) and isinstance(bpe_tokenizer, MegatronTokenizerBase)
