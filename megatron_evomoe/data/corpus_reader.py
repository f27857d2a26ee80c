"""Streaming reader for raw text corpora: JSONL (one JSON object per line) or plain text (one document per line).

Why a reader of our own: preprocessing terabyte corpora must hold one line at a time, and a bad line deep in a
file must be reported as `file:line` with what is wrong, not as a bare json/unicode traceback. Files are read
as bytes and decoded per line, so a non-UTF-8 byte is reported with its line and byte offset.

Conventions:
- `.jsonl` and `.json` files are JSONL (Megatron-LM's "loose json"); other files are plain text, one document
  per line, unless the format is forced.
- A document whose requested texts are all blank (empty or whitespace only), and a blank line, are skipped and
  counted in `num_empty`.
- Reading input with no document at all is an error, raised when the iteration ends.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from megatron_evomoe.data.errors import DataInputError

INPUT_FORMATS = ("auto", "jsonl", "text")
JSONL_SUFFIXES = (".jsonl", ".json")
TEXT_SUFFIXES = (".txt",)
TEXT_KEY = "text"
"""The key under which a plain-text line's document appears in `Document.texts`."""

_MAX_KEYS_IN_MESSAGE = 10


class CorpusError(DataInputError):
    """Malformed or unusable corpus input; the message names the file and, where it applies, the line."""


@dataclass(frozen=True)
class Document:
    """One input document."""

    texts: Mapping[str, str]
    """Requested key → text (plain-text files use the key TEXT_KEY)."""

    source: str
    """The file it came from."""

    line: int
    """Its 1-based line number in `source`."""

    num_bytes: int
    """Size of the raw line in bytes (for throughput reporting)."""


def file_format(path: str, input_format: str = "auto") -> str:
    """The format ('jsonl' or 'text') a file is read in: forced by `input_format`, else by its suffix."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input_format must be one of {INPUT_FORMATS}, got {input_format!r}")
    if input_format != "auto":
        return input_format
    return "jsonl" if path.lower().endswith(JSONL_SUFFIXES) else "text"


def resolve_input_files(inputs: Sequence[str], input_format: str = "jsonl", flag: str = "--input") -> list[str]:
    """Expand --input values into a list of files, in a deterministic order.

    Each value may be a file, a directory (its JSONL files — *.jsonl/*.json — sorted by name; *.txt as well
    for the 'text'/'auto' formats) or a glob pattern (matches sorted). Duplicates are dropped, first one kept.

    Raises:
        CorpusError: a value matches no file.
    """
    if not inputs:
        raise CorpusError(f"{flag}: no input given")
    if input_format == "jsonl":
        suffixes = JSONL_SUFFIXES
    elif input_format == "text":
        suffixes = TEXT_SUFFIXES
    else:
        suffixes = JSONL_SUFFIXES + TEXT_SUFFIXES
    files: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.lower().endswith(suffixes) and os.path.isfile(os.path.join(spec, name))
            )
            if not found:
                raise CorpusError(f"{flag} {spec!r}: directory has no {'/'.join('*' + s for s in suffixes)} files")
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                raise CorpusError(f"{flag} {spec!r}: pattern matches no file")
        else:
            raise CorpusError(f"{flag} {spec!r}: no such file or directory")
        files.extend(p for p in found if p not in files)
    return files


class CorpusReader:
    """Iterates the documents of a list of files, streaming one line at a time.

    Counters (`num_documents`, `num_empty`, `num_bytes`) describe the most recent iteration; they are reset
    when a new iteration starts.

    Args:
        files: input files, read in order (see `resolve_input_files`).
        json_keys: keys whose string values form a JSONL document (ignored for plain text).
        input_format: 'auto' (by suffix), 'jsonl' or 'text'.
    """

    def __init__(self, files: Sequence[str], json_keys: Sequence[str] = (TEXT_KEY,), input_format: str = "auto"):
        if not files:
            raise CorpusError("no input files")
        if not json_keys:
            raise ValueError("json_keys must name at least one key")
        for path in files:
            file_format(path, input_format)  # validates input_format
        self.files = list(files)
        self.json_keys = tuple(json_keys)
        self.input_format = input_format
        self.num_documents = 0
        self.num_empty = 0
        self.num_bytes = 0

    def __iter__(self) -> Iterator[Document]:
        self.num_documents = self.num_empty = self.num_bytes = 0
        for path in self.files:
            for document in self._read_file(path):
                if document is None:
                    self.num_empty += 1
                else:
                    self.num_documents += 1
                    yield document
        if self.num_documents == 0:
            raise CorpusError(
                f"no documents in the input ({len(self.files)} file(s): {', '.join(self.files[:3])}"
                f"{', ...' if len(self.files) > 3 else ''}; {self.num_empty} empty line(s)/document(s) skipped)"
            )

    def _read_file(self, path: str) -> Iterator[Document | None]:
        is_jsonl = file_format(path, self.input_format) == "jsonl"
        try:
            handle = open(path, "rb")
        except OSError as err:
            raise CorpusError(f"{path}: cannot read ({err.strerror})") from None
        with handle:
            offset = 0
            for line_number, raw in enumerate(handle, start=1):
                self.num_bytes += len(raw)
                line = _decode_line(raw, path, line_number, offset)
                offset += len(raw)
                if line_number == 1:
                    line = line.removeprefix("\ufeff")  # tolerate a UTF-8 byte-order mark
                if not line.strip():
                    yield None
                    continue
                if is_jsonl:
                    texts = _parse_json_line(line, path, line_number, self.json_keys)
                else:
                    texts = {TEXT_KEY: line.rstrip("\r\n")}
                if all(not text.strip() for text in texts.values()):
                    yield None
                else:
                    yield Document(texts, path, line_number, len(raw))


def _decode_line(raw: bytes, path: str, line_number: int, line_offset: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(
            f"{path}:{line_number}: invalid UTF-8 byte 0x{raw[err.start]:02x} at byte offset "
            f"{line_offset + err.start} (column {err.start + 1} of the line)"
        ) from None


def _parse_json_line(line: str, path: str, line_number: int, json_keys: Sequence[str]) -> dict[str, str]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise CorpusError(f"{path}:{line_number}: malformed JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(record, dict):
        raise CorpusError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
    texts = {}
    for key in json_keys:
        if key not in record:
            present = list(record)[:_MAX_KEYS_IN_MESSAGE]
            raise CorpusError(
                f"{path}:{line_number}: missing JSON key {key!r} (keys present: "
                f"{', '.join(map(repr, present)) or 'none'}{', ...' if len(record) > len(present) else ''})"
            )
        value = record[key]
        if not isinstance(value, str):
            raise CorpusError(
                f"{path}:{line_number}: JSON key {key!r} holds {type(value).__name__}, expected a string"
            )
        texts[key] = value
    return texts
