"""GLUE TSV reading: every task's exact layout (incl. MNLI's two dev/test sets) and clear errors."""

import os

import pytest

from megatron_evomoe.data.glue.readers import GlueFormatError, read_examples, read_task_data
from megatron_evomoe.data.glue.tasks import GLUE_TASKS, TABLE_ORDER, get_task
from tests.glue.tsv_fixtures import write_task

LABELS = {
    "CoLA": ("1", "0"), "SST-2": ("0", "1"), "MRPC": ("1", "0"), "STS-B": ("4.250", "0.000"), "QQP": ("0", "1"),
    "MNLI": ("neutral", "contradiction"), "QNLI": ("not_entailment", "entailment"),
    "RTE": ("entailment", "not_entailment"),
}
PAIR = {"CoLA": False, "SST-2": False}


def rows(task, tag=""):
    pair = PAIR.get(task, True)
    first, second = LABELS[task]
    return [
        (f'He said "hi{tag}" , twice .', "It was 'late' ." if pair else None, first),
        (f"A second sentence{tag}", "and its partner" if pair else None, second),
    ]


def test_task_registry_matches_table_ii():
    assert set(TABLE_ORDER) == set(GLUE_TASKS)
    assert [GLUE_TASKS[t].primary for t in TABLE_ORDER] == [
        "accuracy", "accuracy", "accuracy", "accuracy", "accuracy", "accuracy", "mcc", "pearson"]
    assert get_task("STS-B").num_outputs == 1 and get_task("MNLI").num_outputs == 3
    with pytest.raises(ValueError, match="WNLI"):
        get_task("WNLI")


@pytest.mark.parametrize("name", TABLE_ORDER)
def test_reads_every_task_layout(tmp_path, name):
    task = get_task(name)
    test_rows = [(a, b, None) for a, b, _ in rows(name)]
    write_task(name, str(tmp_path), rows(name), rows(name, "-dev"), test_rows,
               dev_mm=rows(name, "-mm"), test_mm=test_rows, test_first_id=7)
    data = read_task_data(task, str(tmp_path), train=True, test=True)
    pair = PAIR.get(name, True)
    first, second = LABELS[name]
    assert [e.text_a for e in data.train] == ['He said "hi" , twice .', "A second sentence"]
    assert [e.text_b for e in data.train] == (["It was 'late' .", "and its partner"] if pair else [None, None])
    expected = [4.25, 0.0] if task.is_regression else [task.labels.index(first), task.labels.index(second)]
    assert [e.label for e in data.train] == expected
    # dev sets: MNLI has matched and mismatched, with the "mm" tag
    assert [f.tag for f, _ in data.dev] == (["", "mm"] if name == "MNLI" else [""])
    assert data.dev[0][1][0].text_a.endswith('"hi-dev" , twice .')
    if name == "MNLI":
        assert data.dev[1][1][1].text_a == "A second sentence-mm"
        assert [f.submission for f, _ in data.test] == ["MNLI-m.tsv", "MNLI-mm.tsv"]
        assert [e.guid for e in data.test[1][1]] == ["1007", "1008"]
    # test files: no labels, the id column is kept for the submission
    assert [e.guid for e in data.test[0][1]] == ["7", "8"]
    assert all(e.label is None for _, examples in data.test for e in examples)


def test_mrpc_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "dev.tsv"
    path.write_bytes("\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\tA\rB\tC\r\n".encode("utf-8"))
    (example,) = read_examples(str(path), get_task("MRPC").dev, get_task("MRPC"), labeled=True)
    assert (example.text_a, example.text_b, example.label) == ("A\rB", "C", 1)


def _rte_file(tmp_path, body: str) -> str:
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n" + body)
    return str(path)


@pytest.mark.parametrize(
    "body, message",
    [
        ("0\ta\tb\tentailment\n1\tonly two\tentailment\n", r"train\.tsv:3: expected 4 tab-separated columns .*found 3"),
        ("0\ta\tb\tentailment\n1\ta\tb\tyes\n", r"train\.tsv:3: label 'yes' is not one of entailment, not_entailment"),
        ("", r"train\.tsv: no examples"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, body, message):
    path = _rte_file(tmp_path, body)
    with pytest.raises(GlueFormatError, match=message):
        read_examples(path, get_task("RTE").train, get_task("RTE"), labeled=True)


def test_empty_file_missing_header_column_and_missing_file(tmp_path):
    task = get_task("QNLI")
    empty = tmp_path / "train.tsv"
    empty.write_text("")
    with pytest.raises(GlueFormatError, match=r"train\.tsv: empty file"):
        read_examples(str(empty), task.train, task, labeled=True)
    bad_header = tmp_path / "dev.tsv"
    bad_header.write_text("index\tquestion\ttext\tlabel\n0\tq\ts\tentailment\n")
    with pytest.raises(GlueFormatError, match=r"dev\.tsv:1: the header has no 'sentence' column"):
        read_examples(str(bad_header), task.dev, task, labeled=True)
    with pytest.raises(GlueFormatError, match=r"test\.tsv: no such file .*train\.tsv, dev\.tsv, test\.tsv"):
        read_examples(str(tmp_path / "test.tsv"), task.test, task, labeled=False)
    with pytest.raises(GlueFormatError, match="no such directory"):
        read_task_data(task, str(tmp_path / "nope"))


def test_cola_wrong_column_count_and_stsb_score_range(tmp_path):
    cola = tmp_path / "cola.tsv"
    cola.write_text("gj04\t1\t\tfine .\ngj04\t1\tmissing a column\n")
    with pytest.raises(GlueFormatError, match=r"cola\.tsv:2: expected 4 tab-separated columns, found 3"):
        read_examples(str(cola), get_task("CoLA").train, get_task("CoLA"), labeled=True)
    stsb = get_task("STS-B")
    write_task("STS-B", str(tmp_path / "sts"), [("a", "b", "5.5")], [("a", "b", "1")], [("a", "b", None)])
    with pytest.raises(GlueFormatError, match=r"train\.tsv:2: score '5.5' is not a number in \[0, 5\]"):
        read_examples(os.path.join(tmp_path, "sts", "train.tsv"), stsb.train, stsb, labeled=True)
