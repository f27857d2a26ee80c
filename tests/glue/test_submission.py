"""Test-set prediction files in the GLUE leaderboard's names and formats."""

import numpy as np

from megatron_evomoe.data.glue.readers import GlueExample
from megatron_evomoe.data.glue.submission import decode_outputs, prediction_strings, write_submission
from megatron_evomoe.data.glue.tasks import TABLE_ORDER, get_task

SUBMISSION_NAMES = {
    "CoLA": ["CoLA.tsv"], "SST-2": ["SST-2.tsv"], "MRPC": ["MRPC.tsv"], "STS-B": ["STS-B.tsv"], "QQP": ["QQP.tsv"],
    "MNLI": ["MNLI-m.tsv", "MNLI-mm.tsv"], "QNLI": ["QNLI.tsv"], "RTE": ["RTE.tsv"],
}


def test_submission_file_names():
    for name in TABLE_ORDER:
        assert [f.submission for f in get_task(name).test_files] == SUBMISSION_NAMES[name]


def test_label_strings_per_task():
    assert prediction_strings(get_task("MNLI"), [0, 1, 2]) == ["contradiction", "entailment", "neutral"]
    assert prediction_strings(get_task("RTE"), [1, 0]) == ["not_entailment", "entailment"]
    assert prediction_strings(get_task("QNLI"), [0]) == ["entailment"]
    for name in ("CoLA", "SST-2", "MRPC", "QQP"):
        assert prediction_strings(get_task(name), [1, 0]) == ["1", "0"]
    assert prediction_strings(get_task("STS-B"), [3.14159, -0.2, 5.7]) == ["3.142", "0.000", "5.000"]


def test_decode_outputs():
    assert decode_outputs(get_task("MNLI"), np.array([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])).tolist() == [1, 0]
    assert decode_outputs(get_task("STS-B"), np.array([[1.5], [4.25]])).tolist() == [1.5, 4.25]


def test_written_file_format(tmp_path):
    task = get_task("MNLI")
    examples = [GlueExample(guid=g, text_a="a", text_b="b", label=None) for g in ("0", "1", "2")]
    path = write_submission(task, task.test_files[1], examples, [1, 2, 0], str(tmp_path / "out"))
    assert path.endswith("MNLI-mm.tsv")
    assert open(path).read() == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
