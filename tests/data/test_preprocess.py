"""preprocess_data: round trip through megatron.core's IndexedDataset, determinism, sentences, user errors."""

import json
import os
import pickle
import re

import numpy as np
import pytest
from megatron.core.datasets.indexed_dataset import IndexedDataset
from nltk.tabdata import TabEncoder
from nltk.tokenize.punkt import PunktSentenceTokenizer

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.preprocess import PreprocessConfig, preprocess_data
from megatron_evomoe.data.sentence_splitter import SentenceSplitter, load_punkt_params, train_punkt_params
from megatron_evomoe.data.tokenizer import TokenizerSpec
from tests.data.conftest import load_tool, run_tool, write_jsonl

SENTENCES = ["The first sentence is here.", "A second one follows!", "Is this the third?"]


def records(path):
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def read_back(prefix):
    """(list of token arrays per sequence, document_indices) of an IndexedDataset."""
    dataset = IndexedDataset(prefix)
    sequences = [np.array(dataset[i]) for i in range(len(dataset))]
    document_indices = np.array(dataset.document_indices)
    del dataset
    return sequences, document_indices


def run(tmp_path, source, spec, name="out", **kwargs):
    config = PreprocessConfig([source], str(tmp_path / name), spec, **kwargs)
    return config, preprocess_data(config)


@pytest.mark.parametrize("append_eod", [True, False])
def test_round_trip_equals_tokenizer_encoding(tmp_path, small_corpus_path, bpe_spec, bpe_tokenizer, append_eod):
    config, stats = run(tmp_path, small_corpus_path, bpe_spec, json_keys=["text", "title"], append_eod=append_eod)
    documents = records(small_corpus_path)
    for key in ("text", "title"):
        sequences, document_indices = read_back(config.output_prefix_for(key))
        expected = [bpe_tokenizer.tokenize(d[key]) + ([bpe_tokenizer.eod] if append_eod else []) for d in documents]
        assert [s.tolist() for s in sequences] == expected
        assert document_indices.tolist() == list(range(len(documents) + 1))
        assert stats.num_tokens[key] == sum(map(len, expected))
        assert IndexedDataset(config.output_prefix_for(key)).index.dtype == np.uint16  # vocab < 65500
    assert stats.num_documents == len(documents) and stats.num_empty_documents == 0
    assert config.output_prefix_for("text").endswith("out_text_document")


@pytest.mark.parametrize("split_sentences", [False, True])
def test_workers_give_byte_identical_files(tmp_path, small_corpus_path, bpe_spec, split_sentences):
    outputs = []
    for workers in (1, 2):
        config, _ = run(tmp_path, small_corpus_path, bpe_spec, name=f"w{workers}", workers=workers, chunksize=3,
                        append_eod=True, split_sentences=split_sentences)
        prefix = config.output_prefix_for("text")
        outputs.append([open(prefix + suffix, "rb").read() for suffix in (".bin", ".idx")])
    assert outputs[0] == outputs[1]


def test_sentence_split_one_sequence_per_sentence_with_document_boundaries(tmp_path, small_corpus_path, bpe_spec,
                                                                           bpe_tokenizer):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": " ".join(SENTENCES)}] + records(small_corpus_path)[:8])
    config, stats = run(tmp_path, source, bpe_spec, split_sentences=True, append_eod=True)
    assert config.output_prefix_for("text").endswith("_text_sentence")
    sequences, document_indices = read_back(config.output_prefix_for("text"))

    # The hand-made document: exactly its three sentences, EOD closing the last one.
    assert document_indices[:2].tolist() == [0, 3]
    expected = [bpe_tokenizer.tokenize(s) for s in SENTENCES]
    expected[-1].append(bpe_tokenizer.eod)
    assert [s.tolist() for s in sequences[:3]] == expected

    # Every document: one sequence per sentence of the splitter Punkt trained on this same input.
    texts = [r["text"] for r in records(source)]
    splitter = SentenceSplitter(train_punkt_params(texts))
    per_document = [splitter.split(text) for text in texts]
    assert np.diff(document_indices).tolist() == [len(s) for s in per_document]
    for doc, sentences in enumerate(per_document):
        got = sequences[document_indices[doc]:document_indices[doc + 1]]
        assert [g.tolist() for g in got[:-1]] == [bpe_tokenizer.tokenize(s) for s in sentences[:-1]]
        assert got[-1][-1] == bpe_tokenizer.eod
    assert stats.num_sequences["text"] == sum(map(len, per_document)) > len(texts)


def test_keep_newlines_keeps_the_text_between_sentences(tmp_path, bpe_spec, bpe_tokenizer):
    text = "First line here.\n\nSecond paragraph starts. It goes on.\nLast one!\n"
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": text}] * 3)
    config, _ = run(tmp_path, source, bpe_spec, split_sentences=True, keep_newlines=True)
    sequences, document_indices = read_back(config.output_prefix_for("text"))
    first = sequences[document_indices[0]:document_indices[1]]
    assert len(first) > 1
    assert "".join(bpe_tokenizer.detokenize(s) for s in first) == text


def test_punkt_model_from_tab_directory_and_pickle(tmp_path, small_corpus_path):
    texts = [r["text"] for r in records(small_corpus_path)]
    params = train_punkt_params(texts)
    tab_dir = tmp_path / "punkt_tab"
    tab_dir.mkdir()
    encoder = TabEncoder()
    (tab_dir / "collocations.tab").write_text(encoder.tups2tab(params.collocations))
    (tab_dir / "sent_starters.txt").write_text(encoder.set2txt(params.sent_starters))
    (tab_dir / "abbrev_types.txt").write_text(encoder.set2txt(params.abbrev_types))
    (tab_dir / "ortho_context.tab").write_text(encoder.ivdict2tab(params.ortho_context))
    pickled = tmp_path / "english.pickle"
    pickled.write_bytes(pickle.dumps(PunktSentenceTokenizer(params)))
    expected = [SentenceSplitter(params).split(t) for t in texts]
    for path in (tab_dir, pickled):
        loaded = load_punkt_params(str(path))
        assert [SentenceSplitter(loaded).split(t) for t in texts] == expected
    with pytest.raises(DataInputError, match="not a punkt_tab directory"):
        load_punkt_params(str(tmp_path))


def test_empty_documents_are_skipped_and_counted(tmp_path, bpe_spec, bpe_tokenizer):
    source = write_jsonl(
        tmp_path / "c.jsonl",
        [{"text": "alpha", "title": "A"}, {"text": "", "title": ""}, "", {"text": "beta", "title": "  "},
         {"text": " \n", "title": "C"}],
    )
    config, stats = run(tmp_path, source, bpe_spec, json_keys=["text", "title"])
    assert stats.num_documents == 3 and stats.num_empty_documents == 2
    assert stats.num_skipped == {"text": 1, "title": 1}
    assert [s.tolist() for s in read_back(config.output_prefix_for("text"))[0]] == [
        bpe_tokenizer.tokenize("alpha"), bpe_tokenizer.tokenize("beta")]
    assert "2 empty skipped" in stats.summary() and "1 blank skipped" in stats.summary()


def bad_input_cases(tmp_path, bpe_spec):
    good = {"text": "fine text"}
    non_utf8 = tmp_path / "latin1.jsonl"
    non_utf8.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    missing_vocab = TokenizerSpec("GPT2BPETokenizer", str(tmp_path / "no_vocab.json"), bpe_spec.merge_file)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    return {
        "malformed json": (write_jsonl(tmp_path / "m.jsonl", [good, good, '{"text": oops}']), bpe_spec, "out",
                           "m.jsonl:3: malformed JSON"),
        "missing key": (write_jsonl(tmp_path / "k.jsonl", [good, {"body": "x"}]), bpe_spec, "out",
                        "k.jsonl:2: missing JSON key 'text'"),
        "non utf8": (str(non_utf8), bpe_spec, "out", "latin1.jsonl:2: invalid UTF-8 byte 0xe9 at byte offset 28"),
        "empty input": (write_jsonl(tmp_path / "e.jsonl", ["", {"text": ""}]), bpe_spec, "out",
                        "no documents in the input"),
        "missing vocab": (write_jsonl(tmp_path / "g.jsonl", [good]), missing_vocab, "out",
                          f"--vocab-file '{tmp_path / 'no_vocab.json'}': no such file"),
        "unwritable output": (write_jsonl(tmp_path / "g2.jsonl", [good]), bpe_spec, "a_file/sub/out",
                              "--output-prefix"),
    }


@pytest.mark.parametrize("case", ["malformed json", "missing key", "non utf8", "empty input", "missing vocab",
                                  "unwritable output"])
def test_bad_input_raises_and_leaves_no_output(tmp_path, bpe_spec, case):
    source, spec, prefix, message = bad_input_cases(tmp_path, bpe_spec)[case]
    out_dir = tmp_path / "outputs"
    out_dir.mkdir()
    output_prefix = str(out_dir / prefix) if case != "unwritable output" else str(tmp_path / prefix)
    config = PreprocessConfig([source], output_prefix, spec, workers=2 if case == "malformed json" else 1)
    with pytest.raises(DataInputError, match=re.escape(message)):
        preprocess_data(config)
    assert os.listdir(out_dir) == []  # no final files, no temporaries


def test_key_blank_in_every_document_is_an_error(tmp_path, bpe_spec):
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": "x", "title": ""}])
    with pytest.raises(DataInputError, match="--json-keys 'title': every document is blank"):
        run(tmp_path / "", source, bpe_spec, name="o", json_keys=["text", "title"])
    assert not any(name.startswith("o_") for name in os.listdir(tmp_path))


def test_config_validation():
    spec = TokenizerSpec("GPT2BPETokenizer")
    with pytest.raises(ValueError, match="workers must be >= 1"):
        PreprocessConfig(["a.jsonl"], "out", spec, workers=0)
    with pytest.raises(ValueError, match="--json-keys has duplicates"):
        PreprocessConfig(["a.jsonl"], "out", spec, json_keys=["text", "text"])


def test_preprocess_cli(tmp_path, small_corpus_path, bpe_spec, bpe_tokenizer):
    prefix = tmp_path / "cli"
    done = run_tool("preprocess_data.py", "--input", small_corpus_path, "--output-prefix", prefix, "--tokenizer-type",
                    "GPT2BPETokenizer", "--vocab-file", bpe_spec.vocab_file, "--merge-file", bpe_spec.merge_file,
                    "--append-eod", "--workers", 2, "--log-interval", 5)
    assert done.returncode == 0, done.stderr
    assert "20 documents (0 empty skipped)" in done.stdout
    assert "processed 10 documents (" in done.stderr and "MB/s, " in done.stderr
    # progress by bytes of the known input size: the first 10 lines of the file, then the time left
    lines = open(small_corpus_path, "rb").readlines()
    share = 100.0 * sum(len(line) for line in lines[:10]) / os.path.getsize(small_corpus_path)
    assert f"{share:.1f}% of {os.path.getsize(small_corpus_path) / 1e6:.1f} MB) | elapsed " in done.stderr
    assert re.search(r"\| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d", done.stderr), done.stderr
    sequences, _ = read_back(str(prefix) + "_text_document")
    assert sequences[0].tolist() == bpe_tokenizer.tokenize(records(small_corpus_path)[0]["text"]) + [bpe_tokenizer.eod]


def test_preprocess_cli_user_error_is_one_line(tmp_path, bpe_spec, capsys):
    source = write_jsonl(tmp_path / "bad.jsonl", ['{"text": "a"}', "{nope"])
    argv = ["--input", source, "--output-prefix", str(tmp_path / "o"), "--tokenizer-type", "GPT2BPETokenizer",
            "--vocab-file", bpe_spec.vocab_file, "--merge-file", bpe_spec.merge_file]
    assert load_tool("preprocess_data.py").main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [f"preprocess_data.py: error: {source}:2: malformed JSON: "
                                "Expecting property name enclosed in double quotes (column 2)"]
    assert not any(name.startswith("o_") for name in os.listdir(tmp_path))
