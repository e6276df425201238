"""Pool the hospitals' evaluation counts into consortium-wide metrics.

Nodes send counts (confusion matrix, loss sum, score histograms), never per-image
outputs; sums of counts give exactly the metrics of the pooled validation set
(AUC up to the histogram's bin width).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from services.common.errors import MalformedChunkError
from services.common.ml.classification_metrics import (
    HISTOGRAM_SPACING,
    ClassificationMetrics,
    OperatingPoint,
    auc_from_histograms,
    auc_macro_from_histograms,
    metrics_from_confusion,
    operating_point,
)
from services.common.ml.evaluation_report import EvaluationReport


@dataclass(frozen=True)
class PooledEvaluation:
    metrics: ClassificationMetrics
    confusion: np.ndarray
    loss: float
    examples: int
    nodes: int
    # Binary only, when every hospital sent calibration histograms: the threshold chosen on
    # the pooled calibration splits, and the evaluated images' metrics at it.
    calibrated: OperatingPoint | None = None

    def as_dict(self) -> dict[str, object]:
        row: dict[str, object] = {**asdict(self.metrics), "loss": self.loss, "examples": self.examples,
                                  "nodes": self.nodes, "confusion": self.confusion.tolist()}
        if self.calibrated is not None:
            point = self.calibrated
            row["calibrated"] = {**asdict(point.metrics), "threshold": point.threshold,
                                 "calibration_f1": point.calibration_f1, "confusion": point.confusion.tolist()}
        return row


def validate_report(report: EvaluationReport, num_classes: int) -> None:
    """Refuse a report that cannot be pooled with the others, before it is stored. (The wire edge has already
    refused counts whose lengths do not fit their class and bin counts.)"""
    counts = report.counts
    if counts.num_classes != num_classes:
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} has {counts.num_classes} classes, "
                                  f"the model has {num_classes}")
    if report.histogram_spacing != HISTOGRAM_SPACING:
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} uses histogram spacing "
                                  f"{report.histogram_spacing!r}, expected {HISTOGRAM_SPACING!r}")
    _require_consistent_counts(report)


# The most validation images one report may count, and the largest mean loss an image may add: bounds far above any
# hospital's, so that one fake report cannot swamp the pooled figures.
MAX_REPORTED_EXAMPLES = 10_000_000
MAX_MEAN_LOSS = 1e4


def _require_consistent_counts(report: EvaluationReport) -> None:
    """Counts a real evaluation could have produced: non-negative, finite, within bounds, and telling the same
    number of images in the confusion matrix and in every class's histograms."""
    counts, node = report.counts, report.node_id
    arrays = [counts.confusion, counts.positive_histograms, counts.negative_histograms,
              *(a for a in (report.calibration_positive, report.calibration_negative) if a is not None)]
    if any(bool((np.asarray(a) < 0).any()) for a in arrays):
        raise MalformedChunkError(f"evaluation of node {node!r} holds negative counts")
    examples = int(counts.examples)
    if not 0 <= examples <= MAX_REPORTED_EXAMPLES:
        raise MalformedChunkError(f"evaluation of node {node!r} counts {examples} images, above the bound of "
                                  f"{MAX_REPORTED_EXAMPLES}")
    if not (math.isfinite(counts.loss_sum) and 0 <= counts.loss_sum <= MAX_MEAN_LOSS * max(examples, 1)):
        raise MalformedChunkError(f"evaluation of node {node!r} reports a loss sum of {counts.loss_sum!r}, not a "
                                  f"finite number between 0 and {MAX_MEAN_LOSS:g} per image")
    confusion = np.asarray(counts.confusion, dtype=np.int64)
    positive = np.asarray(counts.positive_histograms, dtype=np.int64).sum(axis=1)
    negative = np.asarray(counts.negative_histograms, dtype=np.int64).sum(axis=1)
    if (int(confusion.sum()) != examples or not np.array_equal(positive, confusion.sum(axis=1))
            or not np.all(positive + negative == examples)):
        raise MalformedChunkError(f"evaluation of node {node!r} is inconsistent: its confusion matrix and score "
                                  f"histograms do not count the same {examples} images")


def pool_reports(reports: list[EvaluationReport]) -> PooledEvaluation:
    classes = reports[0].counts.num_classes
    bins = reports[0].counts.histogram_bins
    confusion = np.zeros((classes, classes), dtype=np.int64)
    positive = np.zeros((classes, bins), dtype=np.int64)
    negative = np.zeros((classes, bins), dtype=np.int64)
    calibration_positive = np.zeros((classes, bins), dtype=np.int64)
    calibration_negative = np.zeros((classes, bins), dtype=np.int64)
    calibrated_reports = 0
    loss_sum, examples = 0.0, 0
    for report in reports:
        counts = report.counts
        if counts.num_classes != classes or counts.histogram_bins != bins:
            raise MalformedChunkError(f"evaluation of node {report.node_id!r} has another class or bin count")
        confusion += counts.confusion
        positive += counts.positive_histograms
        negative += counts.negative_histograms
        if report.calibration_positive is not None and report.calibration_negative is not None:
            calibrated_reports += 1
            calibration_positive += report.calibration_positive
            calibration_negative += report.calibration_negative
        loss_sum += counts.loss_sum
        examples += counts.examples
    metrics = metrics_from_confusion(confusion)
    auc = (auc_from_histograms(positive[1], negative[1]) if classes == 2
           else auc_macro_from_histograms(positive, negative))
    metrics = ClassificationMetrics(**{**asdict(metrics), "auc": auc})
    # A threshold chosen on some hospitals' calibration images only would not be the consortium's.
    calibrated = (operating_point(calibration_positive[1], calibration_negative[1], positive[1], negative=negative[1],
                                  auc=auc)
                  if classes == 2 and calibrated_reports == len(reports) else None)
    return PooledEvaluation(metrics, confusion, loss_sum / max(examples, 1), examples, len(reports), calibrated)
