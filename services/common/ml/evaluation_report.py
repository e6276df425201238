"""A hospital's evaluation of one global model: counts only, never per-image outputs.

The node computes them on its own validation split; the aggregator pools them
(`services/aggregator/pooled_evaluation.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.ml.classification_metrics import HISTOGRAM_SPACING


@dataclass(frozen=True)
class EvaluationCounts:
    confusion: np.ndarray  # (classes, classes): rows true class, columns predicted
    loss_sum: float
    examples: int
    # Per class, histograms (bins evenly spaced in logit) of that class's predicted probability for images of that
    # class (positive) and of the other classes (negative): (classes, bins) each.
    positive_histograms: np.ndarray
    negative_histograms: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(self.confusion.shape[0])

    @property
    def histogram_bins(self) -> int:
        return int(self.positive_histograms.shape[1])


@dataclass(frozen=True)
class EvaluationReport:
    node_id: str
    model_round: int  # the round whose resulting global model was evaluated (0: the initial model)
    counts: EvaluationCounts
    # The same histograms on the hospital's calibration split, disjoint from the evaluated images; None when it
    # keeps none. The aggregator chooses the binary operating point on these.
    calibration_positive: np.ndarray | None = None
    calibration_negative: np.ndarray | None = None
    histogram_spacing: str = HISTOGRAM_SPACING


@dataclass(frozen=True)
class MaskedEvaluationReport:
    """A hospital's evaluation of one model under its pairwise evaluation masks for `participants`
    (`services.common.secure_sum.masked_evaluation`): uniform mod 2^48 on its own, the pooled counts summed over the whole set."""

    node_id: str
    model_round: int
    num_classes: int
    histogram_bins: int
    participants: tuple[str, ...]  # sorted
    values: tuple[int, ...]
