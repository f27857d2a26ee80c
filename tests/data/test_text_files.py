"""files_to_jsonl: one document per file, sorted, deduplicated, .gz read, bad files counted, clean errors."""

import gzip
import json

import pytest

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.text_files import write_jsonl_from_files
from tests.data.conftest import run_tool

LONG = "A sentence long enough to count as a document. " * 3


def make_tree(root):
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a.txt").write_text("first " + LONG, encoding="utf-8")
    (root / "b" / "deep" / "c.txt").write_text("second " + LONG, encoding="utf-8")
    (root / "b" / "copy.txt").write_text("first " + LONG, encoding="utf-8")  # same text as a.txt
    (root / "b" / "short.txt").write_text("stub", encoding="utf-8")
    (root / "b" / "latin1.txt").write_bytes(("caf\xe9 " + LONG).encode("latin-1"))
    (root / "b" / "skipped.rst").write_text("not matched " + LONG, encoding="utf-8")
    with gzip.open(root / "z.txt.gz", "wt", encoding="utf-8") as handle:
        handle.write("\ufeffzipped " + LONG)


def test_tree_becomes_sorted_deduplicated_jsonl(tmp_path):
    make_tree(tmp_path / "docs")
    out = tmp_path / "out" / "corpus.jsonl"
    summary = write_jsonl_from_files([str(tmp_path / "docs")], str(out), ["*.txt", "*.txt.gz"], min_chars=50)
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    # os.walk order with sorted names and subdirectories: a.txt, z.txt.gz, then b/ (copy is a duplicate), b/deep/
    assert [r["source"] for r in records] == ["a.txt", "z.txt.gz", "b/deep/c.txt"]
    assert records[1]["text"] == ("zipped " + LONG).strip()  # decompressed, byte-order mark removed
    assert summary.num_documents == 3
    assert summary.skipped == {"duplicate": 1, "too_short": 1, "not_utf8": 1}
    assert summary.num_bytes == sum(len(r["text"].encode()) for r in records)


def test_nothing_matching_is_one_error_and_leaves_no_file(tmp_path):
    make_tree(tmp_path / "docs")
    out = tmp_path / "corpus.jsonl"
    with pytest.raises(DataInputError, match=r"no file matches --pattern \['\*.md'\]"):
        write_jsonl_from_files([str(tmp_path / "docs")], str(out), ["*.md"])
    with pytest.raises(DataInputError, match="every matching file was left out"):
        write_jsonl_from_files([str(tmp_path / "docs")], str(out), ["short.txt"])
    assert not out.exists() and not (tmp_path / "corpus.jsonl.tmp").exists()


def test_cli_reports_a_missing_input_in_one_line(tmp_path):
    result = run_tool("files_to_jsonl.py", "--input", tmp_path / "nope", "--output", tmp_path / "c.jsonl")
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --input {str(tmp_path / 'nope')!r}: no such file or directory"
