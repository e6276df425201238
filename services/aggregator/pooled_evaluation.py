"""Pool the hospitals' evaluation counts into consortium-wide metrics.

Nodes send counts (confusion matrix, loss sum, score histograms), never per-image
outputs; sums of counts give exactly the metrics of the pooled validation set
(AUC up to the histogram's bin width).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.classification_metrics import (
    HISTOGRAM_SPACING,
    ClassificationMetrics,
    auc_from_histograms,
    auc_macro_from_histograms,
    metrics_from_confusion,
)
from services.common.errors import MalformedChunkError


@dataclass(frozen=True)
class PooledEvaluation:
    metrics: ClassificationMetrics
    confusion: np.ndarray
    loss: float
    examples: int
    nodes: int

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self.metrics), "loss": self.loss, "examples": self.examples, "nodes": self.nodes,
                "confusion": self.confusion.tolist()}


def validate_report(report: pb.EvaluationReport, num_classes: int) -> None:
    """Refuse a report that cannot be pooled with the others, before it is stored."""
    classes, bins = report.num_classes, report.histogram_bins
    if classes != num_classes:
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} has {classes} classes, "
                                  f"the model has {num_classes}")
    if report.histogram_spacing != HISTOGRAM_SPACING:
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} uses histogram spacing "
                                  f"{report.histogram_spacing!r}, expected {HISTOGRAM_SPACING!r}")
    if (len(report.confusion) != classes * classes or len(report.positive_histograms) != classes * bins
            or len(report.negative_histograms) != classes * bins or bins < 1):
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} has counts of the wrong length")


def pool_reports(reports: list[pb.EvaluationReport]) -> PooledEvaluation:
    classes = reports[0].num_classes
    bins = reports[0].histogram_bins
    confusion = np.zeros((classes, classes), dtype=np.int64)
    positive = np.zeros((classes, bins), dtype=np.int64)
    negative = np.zeros((classes, bins), dtype=np.int64)
    loss_sum, examples = 0.0, 0
    for report in reports:
        if report.num_classes != classes or report.histogram_bins != bins:
            raise MalformedChunkError(f"evaluation of node {report.node_id!r} has another class or bin count")
        confusion += np.asarray(report.confusion, dtype=np.int64).reshape(classes, classes)
        positive += np.asarray(report.positive_histograms, dtype=np.int64).reshape(classes, bins)
        negative += np.asarray(report.negative_histograms, dtype=np.int64).reshape(classes, bins)
        loss_sum += report.loss_sum
        examples += report.examples
    metrics = metrics_from_confusion(confusion)
    auc = (auc_from_histograms(positive[1], negative[1]) if classes == 2
           else auc_macro_from_histograms(positive, negative))
    metrics = ClassificationMetrics(**{**asdict(metrics), "auc": auc})
    return PooledEvaluation(metrics, confusion, loss_sum / max(examples, 1), examples, len(reports))
