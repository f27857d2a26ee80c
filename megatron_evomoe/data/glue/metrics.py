"""GLUE metrics as GLUE defines them, as pure numpy functions.

accuracy; F1 of the positive class (label 1: MRPC "equivalent", QQP "duplicate"); Matthews
correlation (CoLA; 0 when a confusion-matrix margin is empty, as scikit-learn returns); Pearson and
Spearman correlation (STS-B; Spearman = Pearson of the ranks, ties given their average rank).
Values are fractions (0.85, not 85).
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Sequence

import numpy as np

from megatron_evomoe.data.glue.tasks import GlueTask


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Fraction of predictions equal to the label."""
    predictions, labels = _pair(predictions, labels)
    return float(np.mean(predictions == labels))


def _confusion(predictions, labels) -> tuple[float, float, float, float]:
    predictions, labels = _pair(predictions, labels)
    tp = float(np.sum((predictions == 1) & (labels == 1)))
    tn = float(np.sum((predictions == 0) & (labels == 0)))
    fp = float(np.sum((predictions == 1) & (labels == 0)))
    fn = float(np.sum((predictions == 0) & (labels == 1)))
    return tp, tn, fp, fn


def f1(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """F1 of class 1 (0 when there is no true or predicted positive)."""
    tp, _, fp, fn = _confusion(predictions, labels)
    denominator = 2 * tp + fp + fn
    return 2 * tp / denominator if denominator else 0.0


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """(TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for binary labels; 0 if undefined."""
    tp, tn, fp, fn = _confusion(predictions, labels)
    denominator = (tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)
    return (tp * tn - fp * fn) / float(np.sqrt(denominator)) if denominator else 0.0


def pearson(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Pearson correlation (0 when either side is constant)."""
    x, y = (np.asarray(v, dtype=np.float64) for v in _pair(predictions, labels))
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator else 0.0


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties sharing their average rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, and the average rank of its members.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def spearman(predictions: Sequence[float], labels: Sequence[float]) -> float:
    """Spearman rank correlation."""
    predictions, labels = _pair(predictions, labels)
    return pearson(average_ranks(predictions), average_ranks(labels))


METRICS = MappingProxyType(
    {"accuracy": accuracy, "f1": f1, "mcc": matthews_corrcoef, "pearson": pearson, "spearman": spearman}
)
"""Metric name -> function(predictions, labels)."""


def task_metrics(task: GlueTask, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """``{metric: value}`` of ``task`` (unsuffixed) for one dev set.

    Args:
        predictions: class indices, or scores for regression.
        labels: gold class indices / scores.
    """
    return {name: METRICS[name](predictions, labels) for name in task.metrics}


def _pair(predictions, labels) -> tuple[np.ndarray, np.ndarray]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise ValueError(f"predictions {predictions.shape} and labels {labels.shape} must be equal 1-D shapes")
    if len(labels) == 0:
        raise ValueError("no examples to score")
    return predictions, labels
