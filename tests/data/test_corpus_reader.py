"""CorpusReader: streaming JSONL/text reading with file:line errors; input resolution; the pydoc corpus."""

import json

import pytest

from megatron_evomoe.data.corpus_reader import CorpusError, CorpusReader, resolve_input_files
from megatron_evomoe.data.pydoc_corpus import pydoc_documents, write_pydoc_corpus
from tests.data.conftest import write_jsonl


def read_all(path, keys=("text",), input_format="auto"):
    reader = CorpusReader([str(path)], keys, input_format)
    return reader, list(reader)


def test_reads_documents_with_line_numbers_and_counts_empty(tmp_path):
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [{"text": "first", "id": 1}, {"text": ""}, "", {"text": "  \n "}, {"text": "second ✓"}],
    )
    reader, docs = read_all(path)
    assert [d.texts["text"] for d in docs] == ["first", "second ✓"]
    assert [d.line for d in docs] == [1, 5]
    assert all(d.source == path for d in docs)
    assert reader.num_documents == 2 and reader.num_empty == 3
    assert reader.num_bytes == len(open(path, "rb").read())


def test_multiple_keys_blank_only_when_all_blank(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "", "title": "t"}, {"text": "", "title": ""}])
    reader, docs = read_all(path, keys=("text", "title"))
    assert [dict(d.texts) for d in docs] == [{"text": "", "title": "t"}]
    assert reader.num_empty == 1


def test_plain_text_is_one_document_per_line(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("alpha beta\n\ngamma\r\n", encoding="utf-8")
    reader, docs = read_all(path)
    assert [d.texts["text"] for d in docs] == ["alpha beta", "gamma"]
    assert reader.num_empty == 1


def test_utf8_bom_is_tolerated(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps({"text": "x"}).encode() + b"\n")
    assert [d.texts["text"] for d in read_all(path)[1]] == ["x"]


@pytest.mark.parametrize(
    "lines, keys, expected",
    [
        (['{"text": "ok"}', '{"text": "ok"}', '{"text": broken}'], ("text",), ":3: malformed JSON"),
        (['{"text": "ok"}', '{"body": "no text"}'], ("text",), ":2: missing JSON key 'text' (keys present: 'body')"),
        (['{"text": 5}'], ("text",), ":1: JSON key 'text' holds int, expected a string"),
        (['["a list"]'], ("text",), ":1: expected a JSON object, got list"),
    ],
)
def test_bad_json_lines_name_file_and_line(tmp_path, lines, keys, expected):
    path = write_jsonl(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CorpusError) as err:
        read_all(path, keys)
    assert str(err.value).startswith(path) and expected in str(err.value)


def test_non_utf8_names_line_and_byte_offset(tmp_path):
    path = tmp_path / "bad.jsonl"
    first = b'{"text": "fine"}\n'
    path.write_bytes(first + b'{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: invalid UTF-8 byte 0xe9 at byte offset (\d+)") as err:
        read_all(path)
    assert f"byte offset {len(first) + 13}" in str(err.value)


def test_empty_input_is_an_error(tmp_path):
    path = write_jsonl(tmp_path / "empty.jsonl", ["", '{"text": ""}'])
    with pytest.raises(CorpusError, match="no documents in the input.*2 empty"):
        read_all(path)


def test_resolve_file_directory_and_glob(tmp_path):
    for name in ("b.jsonl", "a.json", "c.txt"):
        (tmp_path / name).write_text('{"text": "x"}\n')
    assert resolve_input_files([str(tmp_path)]) == [str(tmp_path / "a.json"), str(tmp_path / "b.jsonl")]
    assert resolve_input_files([str(tmp_path / "*.jsonl"), str(tmp_path / "b.jsonl")]) == [str(tmp_path / "b.jsonl")]
    assert resolve_input_files([str(tmp_path)], "text") == [str(tmp_path / "c.txt")]
    with pytest.raises(CorpusError, match="no such file or directory"):
        resolve_input_files([str(tmp_path / "missing.jsonl")])
    with pytest.raises(CorpusError, match="pattern matches no file"):
        resolve_input_files([str(tmp_path / "*.parquet")])
    (tmp_path / "sub").mkdir()
    with pytest.raises(CorpusError, match="directory has no"):
        resolve_input_files([str(tmp_path / "sub")])


def test_pydoc_corpus_is_deterministic_one_document_per_topic(tmp_path):
    from pydoc_data.topics import topics

    documents = pydoc_documents()
    assert [d["topic"] for d in documents] == sorted(t for t in topics if topics[t].strip())
    assert all(d["text"] == topics[d["topic"]] for d in documents)
    first, second = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    assert write_pydoc_corpus(str(first)) == len(documents)
    write_pydoc_corpus(str(second))
    assert first.read_bytes() == second.read_bytes()
    reader, docs = read_all(first)
    assert [d.texts["text"] for d in docs] == [d["text"] for d in documents]
