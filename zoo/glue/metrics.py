"""GLUE metrics as the benchmark defines them, computed offline with scipy and scikit-learn.

CoLA: Matthews correlation; STS-B: Pearson and Spearman correlation; MRPC and QQP: F1 of the
positive class (paraphrase / duplicate, label 1) and accuracy; every other task: accuracy. Values are
fractions (0.812, not 81.2). A task's score is the unweighted mean of its metrics (MNLI: of matched
and mismatched accuracy), and the GLUE average is the mean of the nine task scores, as on the
leaderboard; the diagnostic set AX is not part of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np

from zoo.glue.tasks import TASKS, GlueTask

# scipy and scikit-learn are imported by the metric functions themselves: the leaderboard reads task scores
# through this module and should not pay seconds of imports for metrics it never computes.


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (MRPC: equivalent, QQP: duplicate)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation; 0 when either side is constant (sklearn's convention)."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(function: Callable, predictions: np.ndarray, labels: np.ndarray) -> float:
    # A constant vector has no correlation; report 0 (like MCC) rather than NaN from 0/0.
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    return float(function(predictions, labels)[0])


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman,
}


def predictions_from_outputs(task: GlueTask, outputs: np.ndarray) -> np.ndarray:
    """Model outputs -> predictions: the arg-max class, or the regression value for STS-B."""
    outputs = np.asarray(outputs)
    if task.regression:
        return outputs.reshape(-1).astype(np.float64)
    return outputs.argmax(axis=-1)


def task_metrics(task: GlueTask, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """The task's metrics for one evaluation set, e.g. {'f1': 0.81, 'accuracy': 0.74} for MRPC."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if len(predictions) != len(labels) or len(labels) == 0:
        raise ValueError(f"{task.key}: {len(predictions)} predictions for {len(labels)} labels")
    return {name: METRICS[name](predictions, labels) for name in task.metrics}


def task_score(metrics: Mapping[str, float]) -> float:
    """The task's single score: the mean of its dev metrics (one metric: that metric)."""
    values = list(metrics.values())
    return float(sum(values) / len(values)) if values else math.nan


def glue_average(scores: Mapping[str, float]) -> float | None:
    """Mean of the task scores of the nine GLUE tasks (AX excluded); None until all nine are there."""
    if any(key not in scores for key in TASKS):
        return None
    return float(sum(scores[key] for key in TASKS) / len(TASKS))


def partial_average(scores: Mapping[str, float]) -> float | None:
    """Mean of the task scores that are there (for progress reports; not the GLUE score)."""
    present = [scores[key] for key in TASKS if key in scores]
    return float(sum(present) / len(present)) if present else None
