"""Writers of small GLUE files in each task's exact official layout (headers, column order, BOM).

Rows are given as (text_a, text_b, label) with the label string as it appears in the files (None
in test files); the other columns get plausible filler values, as in the real files.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

Row = tuple[str, Optional[str], Optional[str]]

MNLI_TRAIN_HEADER = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                     "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label")
MNLI_DEV_HEADER = MNLI_TRAIN_HEADER[:11] + ("label2", "label3", "label4", "label5", "gold_label")
MNLI_TEST_HEADER = MNLI_TRAIN_HEADER[:10]
STSB_HEADER = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")


def _write(path: str, header: Optional[Iterable[str]], lines: Iterable[Iterable[str]], bom: bool = False) -> str:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        if bom:
            f.write("\ufeff")
        if header is not None:
            f.write("\t".join(header) + "\n")
        for fields in lines:
            f.write("\t".join(fields) + "\n")
    return path


def _labeled(task: str, rows: list[Row], split: str) -> tuple[Optional[tuple], list[tuple]]:
    """(header, lines) of a train/dev file."""
    if task == "CoLA":
        return None, [("gj04", label, "" if label == "1" else "*", a) for a, _, label in rows]
    if task == "SST-2":
        return ("sentence", "label"), [(a, label) for a, _, label in rows]
    if task == "MRPC":
        return ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), [
            (label, str(1000 + i), str(2000 + i), a, b) for i, (a, b, label) in enumerate(rows)]
    if task == "STS-B":
        return STSB_HEADER + ("score",), [
            (str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none", a, b, label)
            for i, (a, b, label) in enumerate(rows)]
    if task == "QQP":
        return ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), [
            (str(100 + i), str(2 * i), str(2 * i + 1), a, b, label) for i, (a, b, label) in enumerate(rows)]
    if task == "MNLI":
        header = MNLI_TRAIN_HEADER if split == "train" else MNLI_DEV_HEADER
        extra = [] if split == "train" else ["neutral"] * 4  # label2..label5
        return header, [
            (str(i), str(30 + i), f"{30 + i}e", "fiction", f"( {a} )", f"( {b} )", f"(ROOT {a})", f"(ROOT {b})",
             a, b, label, *extra, label)
            for i, (a, b, label) in enumerate(rows)]
    if task == "QNLI":
        return ("index", "question", "sentence", "label"), [
            (str(i), a, b, label) for i, (a, b, label) in enumerate(rows)]
    if task == "RTE":
        return ("index", "sentence1", "sentence2", "label"), [
            (str(i), a, b, label) for i, (a, b, label) in enumerate(rows)]
    raise ValueError(task)


def _test(task: str, rows: list[Row], first_id: int) -> tuple[tuple, list[tuple]]:
    """(header, lines) of a test file; ids start at ``first_id``."""
    ids = [str(first_id + i) for i in range(len(rows))]
    if task in ("CoLA", "SST-2"):
        return ("index", "sentence"), [(i, a) for i, (a, _, _) in zip(ids, rows)]
    if task == "MRPC":
        return ("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), [
            (i, "1", "2", a, b) for i, (a, b, _) in zip(ids, rows)]
    if task == "STS-B":
        return STSB_HEADER, [(i, "main-news", "headlines", "2016", i, "none", "none", a, b)
                             for i, (a, b, _) in zip(ids, rows)]
    if task == "QQP":
        return ("id", "question1", "question2"), [(i, a, b) for i, (a, b, _) in zip(ids, rows)]
    if task == "MNLI":
        return MNLI_TEST_HEADER, [(i, "1", f"{i}n", "slate", a, b, a, b, a, b) for i, (a, b, _) in zip(ids, rows)]
    key_a, key_b = ("question", "sentence") if task == "QNLI" else ("sentence1", "sentence2")
    return ("index", key_a, key_b), [(i, a, b) for i, (a, b, _) in zip(ids, rows)]


def write_task(
    task: str, data_dir: str, train: list[Row], dev: list[Row], test: list[Row],
    dev_mm: Optional[list[Row]] = None, test_mm: Optional[list[Row]] = None, test_first_id: int = 0,
) -> str:
    """Write train/dev/test files of ``task`` into ``data_dir`` (MNLI: matched + mismatched sets)."""
    os.makedirs(data_dir, exist_ok=True)
    bom = task == "MRPC"  # the official MRPC files start with a UTF-8 byte-order mark
    _write(os.path.join(data_dir, "train.tsv"), *_labeled(task, train, "train"), bom=bom)
    if task == "MNLI":
        _write(os.path.join(data_dir, "dev_matched.tsv"), *_labeled(task, dev, "dev"))
        _write(os.path.join(data_dir, "dev_mismatched.tsv"), *_labeled(task, dev_mm or dev, "dev"))
        _write(os.path.join(data_dir, "test_matched.tsv"), *_test(task, test, test_first_id))
        _write(os.path.join(data_dir, "test_mismatched.tsv"), *_test(task, test_mm or test, test_first_id + 1000))
    else:
        _write(os.path.join(data_dir, "dev.tsv"), *_labeled(task, dev, "dev"), bom=bom)
        _write(os.path.join(data_dir, "test.tsv"), *_test(task, test, test_first_id))
    return data_dir
