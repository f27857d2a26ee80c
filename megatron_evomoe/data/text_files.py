"""Turn a tree of text files (documentation sources, books, a crawl dump) into one JSONL corpus.

Why: the preprocessing tools read JSONL, one document per line, while offline corpora usually arrive as
directories of files (Sphinx ``_sources/*.rst.txt``, man pages, ``*.gz`` docs). One file becomes one document,
so document boundaries (EOD tokens, the train/valid/test split by document) follow the files. Files are
visited in sorted order and exact duplicates are dropped, so the same tree always gives the same corpus.
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from megatron_evomoe.data.errors import DataInputError


@dataclass
class TextFilesSummary:
    """What :func:`write_jsonl_from_files` wrote and what it left out."""

    num_documents: int = 0
    num_bytes: int = 0
    skipped: dict = field(default_factory=lambda: {"duplicate": 0, "too_short": 0, "not_utf8": 0})

    def summary(self) -> str:
        left_out = ", ".join(f"{n} {why.replace('_', ' ')}" for why, n in self.skipped.items() if n)
        return f"{self.num_documents} documents, {self.num_bytes / 1e6:.1f} MB of text" + (
            f" (left out: {left_out})" if left_out else ""
        )


def matching_files(roots: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Files under ``roots`` (recursively) whose base name matches one of ``patterns``, sorted per root.

    Raises:
        DataInputError: a root does not exist, or nothing matches.
    """
    found: list[str] = []
    for root in roots:
        if not os.path.exists(root):
            raise DataInputError(f"--input {root!r}: no such file or directory")
        if os.path.isfile(root):
            found.append(root)
            continue
        for directory, subdirs, names in os.walk(root):
            subdirs.sort()
            found.extend(
                os.path.join(directory, name)
                for name in sorted(names)
                if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)
            )
    if not found:
        raise DataInputError(f"--input {list(roots)}: no file matches --pattern {list(patterns)}")
    return found


def read_text(path: str) -> str | None:
    """The file's text (``.gz`` decompressed), or None when it is not UTF-8."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    try:
        return raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None


def documents(files: Sequence[str], root_of: dict, min_chars: int, summary: TextFilesSummary) -> Iterator[dict]:
    """``{"text", "source"}`` per kept file; ``summary.skipped`` counts the others."""
    seen: set[bytes] = set()
    for path in files:
        text = read_text(path)
        if text is None:
            summary.skipped["not_utf8"] += 1
            continue
        text = text.strip()
        if len(text) < min_chars:
            summary.skipped["too_short"] += 1
            continue
        digest = hashlib.sha1(text.encode("utf-8")).digest()
        if digest in seen:
            summary.skipped["duplicate"] += 1
            continue
        seen.add(digest)
        yield {"text": text, "source": os.path.relpath(path, root_of[path])}


def write_jsonl_from_files(
    roots: Sequence[str], output: str, patterns: Sequence[str] = ("*.txt",), min_chars: int = 200
) -> TextFilesSummary:
    """Write one JSONL line per matching file under ``roots`` to ``output`` (through a temporary file).

    Args:
        roots: directories (walked recursively) or single files.
        output: the JSONL path; nothing is left under it if writing fails.
        patterns: shell patterns matched against base names, e.g. ``*.rst.txt`` or ``*.gz``.
        min_chars: files with fewer characters (after stripping) are left out (index pages, stubs).
    """
    summary = TextFilesSummary()
    root_of = {}
    for root in roots:
        for path in matching_files([root], patterns):
            root_of.setdefault(path, root if os.path.isdir(root) else os.path.dirname(root))
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    tmp_path = f"{output}.tmp"
    try:
        with open(tmp_path, "w", encoding="utf-8") as out:
            for document in documents(list(root_of), root_of, min_chars, summary):
                out.write(json.dumps(document, ensure_ascii=False) + "\n")
                summary.num_documents += 1
                summary.num_bytes += len(document["text"].encode("utf-8"))
        if summary.num_documents == 0:
            raise DataInputError(f"--input {list(roots)}: every matching file was left out ({summary.summary()})")
        os.replace(tmp_path, output)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    return summary
