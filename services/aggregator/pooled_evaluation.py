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
    OperatingPoint,
    auc_from_histograms,
    auc_macro_from_histograms,
    metrics_from_confusion,
    operating_point,
)
from services.common.errors import MalformedChunkError


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
    calibration = (len(report.calibration_positive_histograms), len(report.calibration_negative_histograms))
    if calibration not in ((0, 0), (classes * bins, classes * bins)):
        raise MalformedChunkError(f"evaluation of node {report.node_id!r} has calibration histograms of "
                                  f"lengths {calibration}, expected none or {classes * bins} each")


def pool_reports(reports: list[pb.EvaluationReport]) -> PooledEvaluation:
    classes = reports[0].num_classes
    bins = reports[0].histogram_bins
    confusion = np.zeros((classes, classes), dtype=np.int64)
    positive = np.zeros((classes, bins), dtype=np.int64)
    negative = np.zeros((classes, bins), dtype=np.int64)
    calibration_positive = np.zeros((classes, bins), dtype=np.int64)
    calibration_negative = np.zeros((classes, bins), dtype=np.int64)
    calibrated_reports = 0
    loss_sum, examples = 0.0, 0
    for report in reports:
        if report.num_classes != classes or report.histogram_bins != bins:
            raise MalformedChunkError(f"evaluation of node {report.node_id!r} has another class or bin count")
        confusion += np.asarray(report.confusion, dtype=np.int64).reshape(classes, classes)
        positive += np.asarray(report.positive_histograms, dtype=np.int64).reshape(classes, bins)
        negative += np.asarray(report.negative_histograms, dtype=np.int64).reshape(classes, bins)
        if report.calibration_positive_histograms:
            calibrated_reports += 1
            calibration_positive += np.asarray(report.calibration_positive_histograms,
                                               dtype=np.int64).reshape(classes, bins)
            calibration_negative += np.asarray(report.calibration_negative_histograms,
                                               dtype=np.int64).reshape(classes, bins)
        loss_sum += report.loss_sum
        examples += report.examples
    metrics = metrics_from_confusion(confusion)
    auc = (auc_from_histograms(positive[1], negative[1]) if classes == 2
           else auc_macro_from_histograms(positive, negative))
    metrics = ClassificationMetrics(**{**asdict(metrics), "auc": auc})
    # A threshold chosen on some hospitals' calibration images only would not be the consortium's.
    calibrated = (operating_point(calibration_positive[1], calibration_negative[1], positive[1], negative[1], auc)
                  if classes == 2 and calibrated_reports == len(reports) else None)
    return PooledEvaluation(metrics, confusion, loss_sum / max(examples, 1), examples, len(reports), calibrated)
