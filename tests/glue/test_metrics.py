"""GLUE metrics against hand computations and scipy."""

import numpy as np
import pytest
from scipy import stats

from megatron_evomoe.data.glue.metrics import (
    accuracy, average_ranks, f1, matthews_corrcoef, pearson, spearman, task_metrics,
)
from megatron_evomoe.data.glue.tasks import get_task

PREDICTIONS = [1, 1, 0, 1, 0, 0, 1, 0, 1, 1]
LABELS = [1, 0, 0, 1, 1, 0, 1, 0, 0, 1]
# By hand: TP=4 (0,3,6,9), TN=3 (2,5,7), FP=2 (1,8), FN=1 (4).


def test_classification_metrics_by_hand():
    assert accuracy(PREDICTIONS, LABELS) == pytest.approx(7 / 10)
    assert f1(PREDICTIONS, LABELS) == pytest.approx(2 * 4 / (2 * 4 + 2 + 1))
    assert matthews_corrcoef(PREDICTIONS, LABELS) == pytest.approx((4 * 3 - 2 * 1) / np.sqrt(6 * 5 * 5 * 4))


def test_degenerate_cases_follow_glue_conventions():
    assert matthews_corrcoef([1, 1, 1], [1, 0, 1]) == 0.0  # a constant prediction: MCC 0
    assert f1([0, 0], [0, 0]) == 0.0
    assert pearson([1.0, 1.0, 1.0], [0.0, 1.0, 2.0]) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        accuracy([1, 0], [1])


def test_correlations_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    labels = np.round(rng.uniform(0, 5, 200), 1)  # many ties, like STS-B's scores
    predictions = labels + rng.normal(0, 1.0, 200)
    predictions[:20] = 2.5  # ties in the predictions too
    assert pearson(predictions, labels) == pytest.approx(stats.pearsonr(predictions, labels)[0], abs=1e-12)
    assert spearman(predictions, labels) == pytest.approx(stats.spearmanr(predictions, labels)[0], abs=1e-12)
    np.testing.assert_allclose(average_ranks(labels), stats.rankdata(labels))


def test_task_metric_sets():
    assert set(task_metrics(get_task("MRPC"), PREDICTIONS, LABELS)) == {"accuracy", "f1"}
    assert set(task_metrics(get_task("STS-B"), [0.1, 2.0, 4.0], [0.0, 2.5, 3.0])) == {"pearson", "spearman"}
    assert task_metrics(get_task("CoLA"), PREDICTIONS, LABELS) == {"mcc": matthews_corrcoef(PREDICTIONS, LABELS)}
    assert get_task("MNLI").metric_names() == ["accuracy", "accuracy_mm"]
