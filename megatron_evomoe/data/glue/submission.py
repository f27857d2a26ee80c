"""Test-set predictions in the GLUE leaderboard's submission format.

One file per test set, named as the leaderboard expects (``CoLA.tsv``, ``SST-2.tsv``, ``MRPC.tsv``,
``STS-B.tsv``, ``QQP.tsv``, ``MNLI-m.tsv``, ``MNLI-mm.tsv``, ``QNLI.tsv``, ``RTE.tsv``): a header
``index<TAB>prediction``, then one line per test example in file order with the example's id and
the label string of the task (``0``/``1`` for CoLA, SST-2, MRPC and QQP; ``entailment`` /
``neutral`` / ``contradiction`` for MNLI; ``entailment`` / ``not_entailment`` for QNLI and RTE; a
score in [0, 5] with three decimals for STS-B). A full leaderboard submission also needs WNLI.tsv
and AX.tsv, which are not among the paper's eight tasks.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from megatron_evomoe.data.glue.readers import GlueExample
from megatron_evomoe.data.glue.tasks import EvalFile, GlueTask

SUBMISSION_HEADER = ("index", "prediction")


def decode_outputs(task: GlueTask, outputs: np.ndarray) -> np.ndarray:
    """Model outputs ``[N, num_outputs]`` -> class indices ``[N]`` (or scores for regression)."""
    outputs = np.asarray(outputs)
    if task.is_regression:
        return outputs.reshape(len(outputs), -1)[:, 0].astype(np.float64)
    return outputs.argmax(axis=-1)


def prediction_strings(task: GlueTask, predictions: Sequence) -> list[str]:
    """The leaderboard's strings for decoded predictions."""
    if task.is_regression:
        low, high = task.score_range
        return [f"{min(max(float(p), low), high):.3f}" for p in predictions]
    return [task.labels[int(p)] for p in predictions]


def write_submission(
    task: GlueTask, test_file: EvalFile, examples: Sequence[GlueExample], predictions: Sequence, out_dir: str
) -> str:
    """Write one submission file into ``out_dir`` (atomically); returns its path."""
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} test examples but {len(predictions)} predictions")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, test_file.submission)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write("\t".join(SUBMISSION_HEADER) + "\n")
        for example, text in zip(examples, prediction_strings(task, predictions)):
            f.write(f"{example.guid}\t{text}\n")
    os.replace(tmp, path)
    return path
