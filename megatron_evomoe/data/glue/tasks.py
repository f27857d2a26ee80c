"""The eight GLUE tasks of the EvoMoE paper's Table II: file layouts, label sets, metrics.

The layouts are those of the official GLUE distribution (the files of the GLUE download script):
CoLA's train/dev files have no header (4 columns: source, label, original label, sentence); every
other file has a header and its fields are found by column name. MNLI has two dev and two test
files (matched / mismatched). Test files have no labels and an id column that the leaderboard
submission repeats.

Metric names are lower case (``accuracy``, ``f1``, ``mcc``, ``pearson``, ``spearman``). A task's
second dev set reports its metrics with the set's tag as suffix (MNLI: ``accuracy`` for matched,
``accuracy_mm`` for mismatched). ``primary`` picks the best epoch and is the task's Table II entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Optional, Union

from megatron_evomoe.errors import InputError

Column = Union[str, int]
"""A header name, or a 0-based position in files without a header."""


@dataclass(frozen=True)
class FileLayout:
    """Where the fields of one GLUE file are."""

    has_header: bool
    text_a: Column
    text_b: Optional[Column] = None
    label: Optional[Column] = None
    index: Optional[Column] = None
    """The id column the submission file repeats (test files)."""
    num_columns: Optional[int] = None
    """Exact number of columns of a file without a header."""


@dataclass(frozen=True)
class EvalFile:
    """One dev or test file of a task."""

    tag: str
    """'' for the task's main set, else the suffix of its metrics (MNLI's 'mm')."""
    filename: str
    submission: Optional[str] = None
    """Test files: the name of the GLUE leaderboard prediction file."""


@dataclass(frozen=True)
class GlueTask:
    """Everything task-specific that fine-tuning, evaluation and prediction need."""

    name: str
    train: FileLayout
    dev: FileLayout
    test: FileLayout
    labels: Optional[tuple[str, ...]]
    """Label strings as they appear in the files (class index = position); None for regression."""
    metrics: tuple[str, ...]
    primary: str
    dev_files: tuple[EvalFile, ...]
    test_files: tuple[EvalFile, ...]
    score_range: tuple[float, float] = (0.0, 5.0)
    """Regression only: the valid range of scores (STS-B: 0..5)."""

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_outputs(self) -> int:
        """Width of the classification head (1 for regression)."""
        return 1 if self.labels is None else len(self.labels)

    @property
    def train_file(self) -> str:
        return "train.tsv"

    def metric_names(self) -> list[str]:
        """Every metric this task reports, with dev-set suffixes."""
        return [metric_key(m, f.tag) for f in self.dev_files for m in self.metrics]


def metric_key(metric: str, tag: str) -> str:
    """``accuracy`` for the main dev set, ``accuracy_mm`` for MNLI's mismatched one."""
    return f"{metric}_{tag}" if tag else metric


def _pair(a: str, b: str, label: str, index: str = "index") -> tuple[FileLayout, FileLayout]:
    """(train/dev layout, test layout) of a sentence-pair task with a header."""
    return FileLayout(True, a, b, label=label), FileLayout(True, a, b, index=index)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
_DEV = (EvalFile("", "dev.tsv"),)


def _single_test(name: str) -> tuple[EvalFile, ...]:
    return (EvalFile("", "test.tsv", f"{name}.tsv"),)


def _make_tasks() -> Mapping[str, GlueTask]:
    cola_labeled = FileLayout(False, text_a=3, label=1, num_columns=4)
    sst_labeled = FileLayout(True, "sentence", label="label")
    single_test = FileLayout(True, "sentence", index="index")
    mrpc, mrpc_test = _pair("#1 String", "#2 String", "Quality")
    stsb, stsb_test = _pair("sentence1", "sentence2", "score")
    qqp, qqp_test = _pair("question1", "question2", "is_duplicate", index="id")
    mnli, mnli_test = _pair("sentence1", "sentence2", "gold_label")
    qnli, qnli_test = _pair("question", "sentence", "label")
    rte, rte_test = _pair("sentence1", "sentence2", "label")
    tasks = [
        GlueTask("CoLA", cola_labeled, cola_labeled, single_test, _BINARY, ("mcc",), "mcc", _DEV, _single_test("CoLA")),
        GlueTask("SST-2", sst_labeled, sst_labeled, single_test, _BINARY, ("accuracy",), "accuracy", _DEV,
                 _single_test("SST-2")),
        GlueTask("MRPC", mrpc, mrpc, mrpc_test, _BINARY, ("accuracy", "f1"), "accuracy", _DEV, _single_test("MRPC")),
        GlueTask("STS-B", stsb, stsb, stsb_test, None, ("pearson", "spearman"), "pearson", _DEV,
                 _single_test("STS-B")),
        GlueTask("QQP", qqp, qqp, qqp_test, _BINARY, ("accuracy", "f1"), "accuracy", _DEV, _single_test("QQP")),
        GlueTask(
            "MNLI", mnli, mnli, mnli_test, ("contradiction", "entailment", "neutral"), ("accuracy",), "accuracy",
            (EvalFile("", "dev_matched.tsv"), EvalFile("mm", "dev_mismatched.tsv")),
            (EvalFile("", "test_matched.tsv", "MNLI-m.tsv"), EvalFile("mm", "test_mismatched.tsv", "MNLI-mm.tsv")),
        ),
        GlueTask("QNLI", qnli, qnli, qnli_test, _NLI2, ("accuracy",), "accuracy", _DEV, _single_test("QNLI")),
        GlueTask("RTE", rte, rte, rte_test, _NLI2, ("accuracy",), "accuracy", _DEV, _single_test("RTE")),
    ]
    return MappingProxyType({task.name: task for task in tasks})


GLUE_TASKS: Mapping[str, GlueTask] = _make_tasks()
"""Task name (as --task spells it) -> task. Read-only."""

TABLE_ORDER = ("MNLI", "QNLI", "QQP", "RTE", "SST-2", "MRPC", "CoLA", "STS-B")
"""Column order of the paper's Table II."""


def get_task(name: str) -> GlueTask:
    """The task called ``name`` (ValueError naming the choices otherwise)."""
    if name not in GLUE_TASKS:
        raise InputError(f"--task {name!r} is not a GLUE task of this repository (choose from {', '.join(GLUE_TASKS)})")
    return GLUE_TASKS[name]
