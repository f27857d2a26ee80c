"""Read GLUE TSV files into examples, failing with one clear message on malformed input.

GLUE files are tab separated with no quoting (sentences contain unbalanced quotes, so ``csv`` must
not interpret them): a line is split on tabs and nothing else. Lines end at ``\\n`` only (a stray
``\\r`` inside a field stays part of the text). A UTF-8 byte-order mark (MRPC's files start with one)
is dropped. Blank lines are skipped.

Every problem raises :class:`GlueFormatError` naming the file and the 1-based line: a missing
file, an empty file, a header without a needed column, a line whose number of columns differs from
the header's, a label outside the task's label set, an STS-B score that is not a number in [0, 5],
a file with a header but no examples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterator, Optional, Union

from megatron_evomoe.data.errors import DataInputError
from megatron_evomoe.data.glue.tasks import Column, EvalFile, FileLayout, GlueTask


class GlueFormatError(DataInputError):
    """A GLUE file is missing or malformed; the message names the file (and line)."""


@dataclass
class GlueExample:
    """One example of a GLUE file.

    Attributes:
        guid: the id column of a test file (what the submission repeats), else the line number.
        text_a: the (first) sentence.
        text_b: the second sentence of pair tasks, else None.
        label: class index into ``task.labels``, the float score (STS-B), or None (test files).
    """

    guid: str
    text_a: str
    text_b: Optional[str]
    label: Optional[Union[int, float]]


def read_examples(path: str, layout: FileLayout, task: GlueTask, labeled: bool) -> list[GlueExample]:
    """All examples of one GLUE file.

    Args:
        path: the TSV file.
        layout: its columns (``task.train``, ``task.dev`` or ``task.test``).
        task: for the label set / score range.
        labeled: read and check the label column (train and dev files).
    """
    if not os.path.isfile(path):
        raise GlueFormatError(
            f"{path}: no such file (--data-dir must hold the {task.name} GLUE files: "
            + ", ".join(_expected_files(task)) + ")"
        )
    lines = _numbered_lines(path)
    first = next(lines, None)
    if first is None:
        raise GlueFormatError(f"{path}: empty file")
    if layout.has_header:
        header_line, header_text = first
        header = header_text.split("\t")
        num_columns = len(header)
        positions = _resolve_header(path, header_line, header, layout, labeled)
        rows: Iterator[tuple[int, str]] = lines
    else:
        num_columns = layout.num_columns
        positions = {name: getattr(layout, name) for name in ("text_a", "text_b", "label", "index")}
        rows = _chain(first, lines)
    examples = []
    for line_no, text in rows:
        fields = text.split("\t")
        if len(fields) != num_columns:
            raise GlueFormatError(
                f"{path}:{line_no}: expected {num_columns} tab-separated columns"
                + (" (as in the header)" if layout.has_header else "")
                + f", found {len(fields)}"
            )
        examples.append(_example(path, line_no, fields, positions, task, labeled))
    if not examples:
        raise GlueFormatError(f"{path}: no examples (only a header)")
    return examples


def read_train(task: GlueTask, data_dir: str) -> list[GlueExample]:
    """``DATA_DIR/train.tsv``."""
    return read_examples(os.path.join(data_dir, task.train_file), task.train, task, labeled=True)


def read_eval_sets(task: GlueTask, data_dir: str, split: str) -> list[tuple[EvalFile, list[GlueExample]]]:
    """Every dev (``split='dev'``, labeled) or test (``split='test'``) file of ``task``, in order."""
    if split not in ("dev", "test"):
        raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
    files = task.dev_files if split == "dev" else task.test_files
    layout = task.dev if split == "dev" else task.test
    return [
        (f, read_examples(os.path.join(data_dir, f.filename), layout, task, labeled=split == "dev"))
        for f in files
    ]


def _expected_files(task: GlueTask) -> list[str]:
    return [task.train_file] + [f.filename for f in task.dev_files] + [f.filename for f in task.test_files]


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text without the line ending) of each non-blank line."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:
        try:
            for line_no, line in enumerate(f, start=1):
                text = line.rstrip("\r\n")
                if text.strip():
                    yield line_no, text
        except UnicodeDecodeError as err:
            raise GlueFormatError(f"{path}: not UTF-8 text ({err})") from None


def _chain(first, rest):
    yield first
    yield from rest


def _resolve_header(path: str, line_no: int, header: list[str], layout: FileLayout, labeled: bool) -> dict:
    positions: dict[str, Optional[int]] = {}
    for name in ("text_a", "text_b", "label", "index"):
        column: Optional[Column] = getattr(layout, name)
        if column is None or (name == "label" and not labeled):
            positions[name] = None
            continue
        if column not in header:
            raise GlueFormatError(
                f"{path}:{line_no}: the header has no {column!r} column (found: {', '.join(header)})"
            )
        positions[name] = header.index(column)
    return positions


def _example(path: str, line_no: int, fields: list[str], positions: dict, task: GlueTask, labeled: bool) -> GlueExample:
    text_b = fields[positions["text_b"]] if positions["text_b"] is not None else None
    guid = fields[positions["index"]] if positions["index"] is not None else str(line_no)
    label = _parse_label(path, line_no, fields[positions["label"]], task) if labeled else None
    return GlueExample(guid=guid, text_a=fields[positions["text_a"]], text_b=text_b, label=label)


def _parse_label(path: str, line_no: int, text: str, task: GlueTask) -> Union[int, float]:
    value = text.strip()
    if task.is_regression:
        low, high = task.score_range
        try:
            score = float(value)
        except ValueError:
            score = None
        if score is None or not low <= score <= high:
            raise GlueFormatError(f"{path}:{line_no}: score {text!r} is not a number in [{low:g}, {high:g}]")
        return score
    if value not in task.labels:
        raise GlueFormatError(
            f"{path}:{line_no}: label {text!r} is not one of {', '.join(task.labels)} ({task.name})"
        )
    return task.labels.index(value)


@dataclass
class GlueData:
    """The files of one task that a run reads."""

    train: list[GlueExample]
    """Empty when the run does not train."""
    dev: list[tuple[EvalFile, list[GlueExample]]]
    test: list[tuple[EvalFile, list[GlueExample]]]
    """Empty unless predictions are wanted."""


def read_task_data(task: GlueTask, data_dir: str, train: bool = True, test: bool = False) -> GlueData:
    """Read (and check) every file the run needs before any training starts."""
    if not os.path.isdir(data_dir):
        raise GlueFormatError(f"--data-dir {data_dir!r}: no such directory")
    return GlueData(
        train=read_train(task, data_dir) if train else [],
        dev=read_eval_sets(task, data_dir, "dev"),
        test=read_eval_sets(task, data_dir, "test") if test else [],
    )
