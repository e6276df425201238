"""Classification metrics computed from counts that hospitals can pool.

Hospitals share confusion matrices and score histograms, never per-image
predictions: both are sums, so the consortium-wide metric is the metric of
the summed counts.

Conventions:

* A ratio whose denominator is zero (for example precision when nothing was
  predicted positive) is defined as ``0.0``; this keeps the dataclass free of
  NaN so it can be serialized and compared.
* Binary (2 classes): class 1 is the positive class.
* More than two classes: precision, recall, specificity and F1 are the
  unweighted (macro) means of the one-vs-rest values of each class; macro F1
  is the mean of per-class F1, not the F1 of macro precision and recall.
* ROC AUC is the Mann-Whitney statistic P(score_pos > score_neg) over pooled
  score histograms (Hanley & McNeil, Radiology 143(1), 1982); two scores in
  the same bin count as a tie worth 1/2, so the bin width bounds the error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

CountArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class ClassificationMetrics:
    accuracy: float
    precision: float
    recall: float  # sensitivity
    specificity: float
    f1: float
    auc: float | None = None


# Score histograms: 100 bins whose edges are evenly spaced in logit (see histogram_edges).
HISTOGRAM_BINS: Final[int] = 100
HISTOGRAM_SPACING: Final[str] = "logit"


def histogram_edges(bins: int = HISTOGRAM_BINS) -> npt.NDArray[np.float64]:
    """Probability bin edges spaced evenly in logit over [-12, 12], plus 0 and 1.

    Even spacing in probability puts every image of a confident model into the top or bottom bin, and the
    pooled AUC computed from the bins then reads 0.5 whatever the ranking; logit spacing keeps the ranking.
    """
    interior = 1.0 / (1.0 + np.exp(-np.linspace(-12.0, 12.0, bins - 1)))
    return np.concatenate([[0.0], interior, [1.0]])


def confusion_matrix(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, num_classes: int
) -> CountArray:
    """Counts of (true, predicted) pairs: rows are true classes, columns predicted."""
    truth = np.asarray(y_true)
    predicted = np.asarray(y_pred)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if truth.shape != predicted.shape or truth.ndim != 1:
        raise ValueError(
            f"y_true and y_pred must be 1-D of equal length, got {truth.shape} and {predicted.shape}"
        )
    for name, values in (("y_true", truth), ("y_pred", predicted)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes})")
    flat = truth.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(
    confusion: npt.ArrayLike, auc: float | None = None
) -> ClassificationMetrics:
    """Accuracy, precision, recall, specificity and F1 of a confusion matrix.

    ``auc`` cannot be derived from a confusion matrix; pass the value from
    :func:`auc_from_histograms` to carry it in the same record.
    """
    counts = _validated_confusion(confusion)
    total = int(counts.sum())
    accuracy = _ratio(int(np.trace(counts)), total)
    true_positive = np.diag(counts)
    predicted_positive = counts.sum(axis=0)
    actual_positive = counts.sum(axis=1)
    false_positive = predicted_positive - true_positive
    false_negative = actual_positive - true_positive
    true_negative = total - true_positive - false_positive - false_negative

    precision = _ratios(true_positive, true_positive + false_positive)
    recall = _ratios(true_positive, true_positive + false_negative)
    specificity = _ratios(true_negative, true_negative + false_positive)
    f1 = _ratios(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    if counts.shape[0] == 2:
        positive = 1
        return ClassificationMetrics(
            accuracy, precision[positive], recall[positive], specificity[positive], f1[positive], auc
        )
    return ClassificationMetrics(
        accuracy,
        float(np.mean(precision)),
        float(np.mean(recall)),
        float(np.mean(specificity)),
        float(np.mean(f1)),
        auc,
    )


def score_histograms(
    scores: npt.ArrayLike, y_true_binary: npt.ArrayLike, bins: int = 100
) -> tuple[CountArray, CountArray]:
    """Histograms over [0, 1] of the positive-class scores of positives and negatives.

    Bin ``i`` holds scores in ``[i / bins, (i + 1) / bins)``; a score of
    exactly 1.0 goes to the last bin.
    """
    score_array = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(y_true_binary)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if score_array.shape != truth.shape or score_array.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D of equal length, got {score_array.shape} and {truth.shape}"
        )
    if not np.all((score_array >= 0.0) & (score_array <= 1.0)):
        raise ValueError("scores must be probabilities in [0, 1] (NaN is not allowed)")
    if not np.all((truth == 0) | (truth == 1)):
        raise ValueError("y_true_binary must contain only 0 and 1")
    bin_index = np.minimum((score_array * bins).astype(np.int64), bins - 1)
    positive = np.bincount(bin_index[truth == 1], minlength=bins).astype(np.int64)
    negative = np.bincount(bin_index[truth == 0], minlength=bins).astype(np.int64)
    return positive, negative


def one_vs_rest_histograms(
    probabilities: npt.ArrayLike, y_true: npt.ArrayLike, bins: int = 100
) -> tuple[CountArray, CountArray]:
    """Per-class score histograms, each shaped ``(classes, bins)``.

    Row ``c`` treats class ``c`` as positive and its predicted probability as
    the score; feed the result to :func:`auc_macro_from_histograms`.
    """
    probability_array = np.asarray(probabilities, dtype=np.float64)
    truth = np.asarray(y_true)
    if probability_array.ndim != 2:
        raise ValueError(f"probabilities must be (samples, classes), got {probability_array.shape}")
    pairs = [
        score_histograms(probability_array[:, label], (truth == label).astype(np.int64), bins)
        for label in range(probability_array.shape[1])
    ]
    return np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])


def auc_from_histograms(
    positive_histogram: npt.ArrayLike, negative_histogram: npt.ArrayLike
) -> float | None:
    """Mann-Whitney AUC from binned scores; ``None`` when a class is absent.

    AUC = (sum_i pos_i * (negatives in lower bins) + 1/2 * pos_i * neg_i) / (P * N).
    The sum is kept in integers (doubled) so pooled counts give an exact result.
    """
    positive = _validated_histogram(positive_histogram, "positive_histogram")
    negative = _validated_histogram(negative_histogram, "negative_histogram")
    if positive.shape != negative.shape:
        raise ValueError(f"histograms differ in shape: {positive.shape} vs {negative.shape}")
    positive_total = int(positive.sum())
    negative_total = int(negative.sum())
    if positive_total == 0 or negative_total == 0:
        return None
    negatives_below = np.concatenate([[0], np.cumsum(negative)[:-1]])
    doubled_wins = 2 * int(np.dot(positive, negatives_below)) + int(np.dot(positive, negative))
    return doubled_wins / (2 * positive_total * negative_total)


def auc_macro_from_histograms(
    positive_histograms: npt.ArrayLike, negative_histograms: npt.ArrayLike
) -> float | None:
    """Unweighted mean of the one-vs-rest AUCs of the classes where it is defined.

    A class with no positive (or no negative) samples has no AUC and is left
    out of the mean; ``None`` when no class has one.
    """
    positive = np.asarray(positive_histograms)
    negative = np.asarray(negative_histograms)
    if positive.ndim != 2 or positive.shape != negative.shape:
        raise ValueError(
            f"expected two (classes, bins) arrays of one shape, got {positive.shape} and {negative.shape}"
        )
    per_class = [auc_from_histograms(pos, neg) for pos, neg in zip(positive, negative)]
    defined = [value for value in per_class if value is not None]
    return float(np.mean(defined)) if defined else None


@dataclass(frozen=True)
class OperatingPoint:
    """A binary decision threshold chosen on one set of counts and applied to another.

    ``threshold``: predict positive when P(positive) >= threshold (a histogram bin edge).
    ``calibration_f1``: the F1 that threshold reached on the set it was chosen on.
    ``metrics`` and ``confusion``: the evaluated set at that threshold.
    """

    threshold: float
    calibration_f1: float
    metrics: ClassificationMetrics
    confusion: CountArray


def confusion_at_edge(positive_histogram: npt.ArrayLike, negative_histogram: npt.ArrayLike,
                      edge: int) -> CountArray:
    """The 2x2 confusion matrix of "positive when the score lies in bin ``edge`` or above"."""
    positive = _validated_histogram(positive_histogram, "positive_histogram")
    negative = _validated_histogram(negative_histogram, "negative_histogram")
    if positive.shape != negative.shape or not 0 <= edge <= positive.size:
        raise ValueError(f"edge {edge} outside 0..{positive.size}, or histograms of unequal shape")
    true_positive, false_negative = int(positive[edge:].sum()), int(positive[:edge].sum())
    false_positive, true_negative = int(negative[edge:].sum()), int(negative[:edge].sum())
    return np.array([[true_negative, false_positive], [false_negative, true_positive]], dtype=np.int64)


def best_f1_edge(positive_histogram: npt.ArrayLike, negative_histogram: npt.ArrayLike) -> tuple[int, float]:
    """The bin edge whose threshold maximises F1 on these counts, and that F1.

    Ties go to the highest edge (fewest positive calls). With no positive, F1 is 0
    everywhere and the answer is the top edge.
    """
    positive = _validated_histogram(positive_histogram, "positive_histogram")
    negative = _validated_histogram(negative_histogram, "negative_histogram")
    if positive.shape != negative.shape:
        raise ValueError(f"histograms differ in shape: {positive.shape} vs {negative.shape}")
    # Counts at or above each edge 0..bins (edge `bins` calls nothing positive).
    true_positive = np.concatenate([np.cumsum(positive[::-1])[::-1], [0]])
    false_positive = np.concatenate([np.cumsum(negative[::-1])[::-1], [0]])
    false_negative = int(positive.sum()) - true_positive
    denominator = 2 * true_positive + false_positive + false_negative
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(denominator.shape), where=denominator > 0)
    edge = int(np.flatnonzero(f1 == f1.max())[-1])
    return edge, float(f1[edge])


def operating_point(calibration_positive: npt.ArrayLike, calibration_negative: npt.ArrayLike,
                    positive: npt.ArrayLike, *, negative: npt.ArrayLike, auc: float | None = None,
                    edges: npt.NDArray[np.float64] | None = None) -> OperatingPoint:
    """Choose the F1-maximising threshold on calibration histograms; evaluate it on the others.

    All four are one class's histograms over the same bins (``histogram_edges``). The
    evaluated set must be disjoint from the calibration set, or the F1 is optimistic.
    """
    bin_edges = histogram_edges(np.asarray(positive).size) if edges is None else edges
    edge, calibration_f1 = best_f1_edge(calibration_positive, calibration_negative)
    confusion = confusion_at_edge(positive, negative, edge)
    return OperatingPoint(float(bin_edges[edge]), calibration_f1, metrics_from_confusion(confusion, auc), confusion)


def f1_sampling_sd(confusion: npt.ArrayLike, draws: int = 20_000, seed: int = 0) -> float:
    """The standard deviation of F1 over multinomial resamplings of a confusion matrix.

    Each draw spreads the same number of images over the cells at the observed cell
    frequencies (a parametric bootstrap, Efron & Tibshirani 1993, ch. 6). The spread is
    the F1's error from the finite evaluated set alone; training randomness is not in it.
    """
    counts = _validated_confusion(confusion)
    total = int(counts.sum())
    if total == 0:
        return 0.0
    classes = counts.shape[0]
    samples = np.random.default_rng(seed).multinomial(total, counts.ravel() / total, size=draws)
    return float(_f1_of_confusions(samples.reshape(draws, classes, classes)).std())


@dataclass(frozen=True)
class PairedDifference:
    """F1(b) - F1(a) of two models' predictions on the same images, with its bootstrap spread."""

    difference: float
    sd: float
    low: float  # 2.5th percentile of the resampled differences
    high: float  # 97.5th percentile


def paired_f1_difference(y_true: npt.ArrayLike, predicted_a: npt.ArrayLike, predicted_b: npt.ArrayLike,
                         *, num_classes: int, draws: int = 20_000, seed: int = 0) -> PairedDifference:
    """F1(b) - F1(a) and its spread when the evaluated images are resampled, both models together.

    Resampling images with replacement is a multinomial draw over the (truth, a's prediction,
    b's prediction) cells at their observed frequencies. Images both models get right or both
    get wrong move the two F1s together, so the paired spread is smaller than that of two
    independent F1s. Needs per-image predictions, which hospitals never pool: this is for
    experiments that hold the evaluated images centrally (the SYNTHETIC experiment harness).
    """
    truth, first, second = (np.asarray(v, dtype=np.int64) for v in (y_true, predicted_a, predicted_b))
    if not truth.shape == first.shape == second.shape or truth.ndim != 1:
        raise ValueError(f"need three 1-D arrays of equal length, got {truth.shape}, {first.shape}, {second.shape}")
    joint = np.zeros((num_classes,) * 3, dtype=np.int64)
    np.add.at(joint, (truth, first, second), 1)
    observed = metrics_from_confusion(joint.sum(axis=1)).f1 - metrics_from_confusion(joint.sum(axis=2)).f1
    total = int(truth.size)
    if total == 0:
        return PairedDifference(observed, 0.0, observed, observed)
    samples = np.random.default_rng(seed).multinomial(total, joint.ravel() / total, size=draws)
    samples = samples.reshape((draws,) + (num_classes,) * 3)
    differences = _f1_of_confusions(samples.sum(axis=2)) - _f1_of_confusions(samples.sum(axis=3))
    low, high = np.percentile(differences, [2.5, 97.5])
    return PairedDifference(observed, float(differences.std()), float(low), float(high))


def _f1_of_confusions(confusions: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """F1 of each of a stack of confusion matrices (draws x classes x classes), as metrics_from_confusion."""
    true_positive = np.diagonal(confusions, axis1=1, axis2=2)
    denominator = confusions.sum(axis=1) + confusions.sum(axis=2)  # predicted + actual = 2 TP + FP + FN
    f1: npt.NDArray[np.float64] = np.divide(2 * true_positive, denominator, out=np.zeros(denominator.shape),
                                            where=denominator > 0)
    per_draw: npt.NDArray[np.float64] = f1[:, 1] if confusions.shape[1] == 2 else f1.mean(axis=1)
    return per_draw


def _validated_confusion(confusion: npt.ArrayLike) -> CountArray:
    counts = np.asarray(confusion)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] < 2:
        raise ValueError(f"confusion matrix must be square with >= 2 classes, got {counts.shape}")
    if not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0:
        raise ValueError("confusion matrix must hold non-negative integer counts")
    return counts.astype(np.int64)


def _validated_histogram(histogram: npt.ArrayLike, name: str) -> CountArray:
    counts = np.asarray(histogram)
    if counts.ndim != 1 or not np.issubdtype(counts.dtype, np.integer) or (counts.size and counts.min() < 0):
        raise ValueError(f"{name} must be a 1-D array of non-negative integer counts")
    return counts.astype(np.int64)


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _ratios(numerators: CountArray, denominators: CountArray) -> list[float]:
    return [_ratio(int(top), int(bottom)) for top, bottom in zip(numerators, denominators)]
