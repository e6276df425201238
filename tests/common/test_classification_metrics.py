"""Specification of the pooled classification metrics (expected values computed by hand)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.ml.classification_metrics import (
    auc_from_histograms,
    auc_macro_from_histograms,
    confusion_matrix,
    f1_sampling_sd,
    metrics_from_confusion,
    one_vs_rest_histograms,
    paired_f1_difference,
    score_histograms,
)


def _brute_force_binned_auc(scores: np.ndarray, truth: np.ndarray, bins: int) -> float:
    """Pairwise comparison of bin numbers: 1 per win, 1/2 per tie."""
    bin_number = np.floor(scores * bins).clip(max=bins - 1)
    positive, negative = bin_number[truth == 1], bin_number[truth == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positive for n in negative)
    return wins / (positive.size * negative.size)


def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    cm = confusion_matrix([0, 0, 1, 1, 2, 2, 2], [0, 1, 1, 1, 2, 0, 2], num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 2]])
    assert cm.dtype == np.int64


def test_confusion_matrix_has_a_row_for_a_class_never_seen() -> None:
    cm = confusion_matrix([0, 0], [0, 1], num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(
    ("truth", "predicted"), [([0, 1], [0]), ([0, 3], [0, 1]), ([0, 1], [-1, 1])]
)
def test_confusion_matrix_refuses_bad_labels(truth: list[int], predicted: list[int]) -> None:
    with pytest.raises(ValueError):
        confusion_matrix(truth, predicted, num_classes=3)


def test_binary_metrics_use_class_one_as_positive() -> None:
    # tn=50 fp=10 / fn=5 tp=35
    metrics = metrics_from_confusion(np.array([[50, 10], [5, 35]]))
    assert metrics.accuracy == pytest.approx(85 / 100)
    assert metrics.precision == pytest.approx(35 / 45)
    assert metrics.recall == pytest.approx(35 / 40)
    assert metrics.specificity == pytest.approx(50 / 60)
    assert metrics.f1 == pytest.approx(70 / 85)
    assert metrics.auc is None


def test_three_class_metrics_are_macro_one_vs_rest_means() -> None:
    # Per class (tp, fp, fn, tn): 0 -> (1,1,1,4); 1 -> (2,1,0,4); 2 -> (2,0,1,4).
    metrics = metrics_from_confusion(np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]]), auc=0.75)
    assert metrics.accuracy == pytest.approx(5 / 7)
    assert metrics.precision == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert metrics.recall == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert metrics.specificity == pytest.approx((4 / 5 + 4 / 5 + 1) / 3)
    assert metrics.f1 == pytest.approx((2 / 4 + 4 / 5 + 4 / 5) / 3)
    assert metrics.auc == 0.75


def test_zero_over_zero_is_defined_as_zero() -> None:
    # Nothing positive, nothing predicted positive: precision and recall are 0/0.
    metrics = metrics_from_confusion(np.array([[5, 0], [0, 0]]))
    assert metrics.precision == 0.0
    assert metrics.recall == 0.0
    assert metrics.f1 == 0.0
    assert metrics.specificity == 1.0
    assert metrics.accuracy == 1.0


def test_empty_confusion_matrix_gives_all_zero_metrics() -> None:
    metrics = metrics_from_confusion(np.zeros((2, 2), dtype=np.int64))
    assert (metrics.accuracy, metrics.precision, metrics.recall, metrics.specificity, metrics.f1) == (0, 0, 0, 0, 0)


@pytest.mark.parametrize(
    "confusion", [np.array([[1, 2, 3]]), np.array([[1]]), np.array([[1, -1], [0, 2]]), np.array([[0.5, 0], [0, 1]])]
)
def test_malformed_confusion_matrix_is_refused(confusion: np.ndarray) -> None:
    with pytest.raises(ValueError):
        metrics_from_confusion(confusion)


def test_score_histograms_bin_by_score_and_put_one_in_the_last_bin() -> None:
    positive, negative = score_histograms(
        np.array([0.0, 0.05, 0.1, 0.99, 1.0]), np.array([0, 1, 0, 1, 1]), bins=10
    )
    np.testing.assert_array_equal(positive, [1, 0, 0, 0, 0, 0, 0, 0, 0, 2])
    np.testing.assert_array_equal(negative, [1, 1, 0, 0, 0, 0, 0, 0, 0, 0])


@pytest.mark.parametrize(
    ("scores", "truth"), [([0.2, 1.5], [0, 1]), ([0.2, np.nan], [0, 1]), ([0.2, 0.3], [0, 2]), ([0.2], [0, 1])]
)
def test_score_histograms_refuse_bad_input(scores: list[float], truth: list[int]) -> None:
    with pytest.raises(ValueError):
        score_histograms(np.array(scores), np.array(truth))


def test_auc_counts_wins_and_half_ties_by_hand() -> None:
    # Positive in bin 1 beats 2 negatives and ties 1: 2.5; two positives in bin 2 beat 3 each: 6.
    assert auc_from_histograms(np.array([0, 1, 2]), np.array([2, 1, 0])) == pytest.approx(8.5 / 9)


def test_auc_is_one_for_perfect_separation_and_half_for_all_ties() -> None:
    assert auc_from_histograms(np.array([0, 0, 4]), np.array([3, 0, 0])) == 1.0
    assert auc_from_histograms(np.array([4, 0, 0]), np.array([0, 0, 3])) == 0.0
    assert auc_from_histograms(np.array([0, 7, 0]), np.array([0, 2, 0])) == 0.5


def test_auc_is_none_when_a_class_is_missing() -> None:
    assert auc_from_histograms(np.array([0, 0, 0]), np.array([1, 2, 3])) is None
    assert auc_from_histograms(np.array([1, 0, 0]), np.array([0, 0, 0])) is None


def test_auc_matches_brute_force_pairwise_count_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, size=300)
    scores = np.clip(rng.normal(0.4 + 0.2 * truth, 0.2), 0.0, 1.0)
    for bins in (7, 100):
        positive, negative = score_histograms(scores, truth, bins=bins)
        assert auc_from_histograms(positive, negative) == pytest.approx(
            _brute_force_binned_auc(scores, truth, bins), abs=1e-12
        )


def test_fine_bins_approach_the_exact_auc_of_unbinned_scores() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, size=400)
    scores = rng.uniform(0.0, 1.0, size=400) ** np.where(truth == 1, 0.5, 1.0)
    positive_scores, negative_scores = scores[truth == 1], scores[truth == 0]
    exact = (positive_scores[:, None] > negative_scores[None, :]).mean()
    positive, negative = score_histograms(scores, truth, bins=100_000)
    assert auc_from_histograms(positive, negative) == pytest.approx(exact, abs=1e-3)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 1)), min_size=2, max_size=60),
    st.integers(1, 59),
)
def test_pooled_histograms_give_the_auc_of_the_pooled_data(
    samples: list[tuple[float, int]], cut: int
) -> None:
    scores = np.array([score for score, _ in samples])
    truth = np.array([label for _, label in samples])
    cut = min(cut, len(samples) - 1)
    first = score_histograms(scores[:cut], truth[:cut], bins=20)
    second = score_histograms(scores[cut:], truth[cut:], bins=20)
    pooled = auc_from_histograms(first[0] + second[0], first[1] + second[1])
    whole = auc_from_histograms(*score_histograms(scores, truth, bins=20))
    assert pooled == whole
    if whole is not None:
        assert whole == pytest.approx(_brute_force_binned_auc(scores, truth, 20), abs=1e-12)


def test_macro_auc_averages_the_classes_that_have_an_auc() -> None:
    positive = np.array([[0, 1], [1, 0], [0, 0]])  # class 2 has no positives: left out
    negative = np.array([[1, 0], [0, 1], [1, 1]])
    # class 0: AUC 1.0, class 1: AUC 0.0
    assert auc_macro_from_histograms(positive, negative) == pytest.approx(0.5)
    assert auc_macro_from_histograms(np.zeros((2, 3), dtype=np.int64), np.ones((2, 3), dtype=np.int64)) is None


def test_one_vs_rest_histograms_treat_each_class_as_positive_in_turn() -> None:
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    truth = np.array([0, 1, 2, 1])
    positive, negative = one_vs_rest_histograms(probabilities, truth, bins=2)
    # bins [0, 0.5) and [0.5, 1]; class 0 positive: sample 0 (0.8); negatives 0.2, 0.1, 0.5.
    np.testing.assert_array_equal(positive, [[0, 1], [1, 1], [0, 1]])
    np.testing.assert_array_equal(negative, [[2, 1], [2, 0], [3, 0]])
    # class 0: 1 pos in bin 1 vs negs (2 below, 1 tie) -> 2.5/3;
    # class 1: pos in bin 1 beats both negs (2), pos in bin 0 ties both (2 x 1/2) -> 3/4;
    # class 2: 1 pos in bin 1 beats all 3 negs -> 1.
    assert auc_macro_from_histograms(positive, negative) == pytest.approx((2.5 / 3 + 3 / 4 + 1.0) / 3)


# --- operating point --------------------------------------------------------------------------------------

def test_confusion_at_an_edge_counts_the_bins_at_and_above_it_as_positive_calls() -> None:
    from services.common.ml.classification_metrics import confusion_at_edge

    positive, negative = np.array([1, 2, 3, 4]), np.array([5, 3, 1, 0])
    # Edge 2: bins 2 and 3 are called positive. TP 3+4, FN 1+2, FP 1+0, TN 5+3.
    np.testing.assert_array_equal(confusion_at_edge(positive, negative, 2), [[8, 1], [3, 7]])
    np.testing.assert_array_equal(confusion_at_edge(positive, negative, 0), [[0, 9], [0, 10]])
    np.testing.assert_array_equal(confusion_at_edge(positive, negative, 4), [[9, 0], [10, 0]])
    with pytest.raises(ValueError, match="edge 5"):
        confusion_at_edge(positive, negative, 5)


def test_best_f1_edge_is_the_threshold_a_hand_count_picks() -> None:
    from services.common.ml.classification_metrics import best_f1_edge

    positive, negative = np.array([1, 2, 3, 4]), np.array([5, 3, 1, 0])
    # F1 by edge, by hand: edge 0: 20/29; 1: 18/(18+4+1) = 18/23; 2: 14/(14+1+3) = 14/18; 3: 8/(8+0+6) = 8/14.
    # 18/23 = 0.7826 > 14/18 = 0.7778: edge 1.
    edge, f1 = best_f1_edge(positive, negative)
    assert edge == 1
    assert f1 == pytest.approx(18 / 23)


def test_best_f1_edge_with_no_positive_calls_nothing_positive() -> None:
    from services.common.ml.classification_metrics import best_f1_edge

    assert best_f1_edge(np.zeros(4, dtype=np.int64), np.array([1, 1, 1, 1])) == (4, 0.0)


def test_the_operating_point_is_chosen_on_the_calibration_counts_and_evaluated_on_the_others() -> None:
    from services.common.ml.classification_metrics import histogram_edges, operating_point

    edges = histogram_edges(4)
    calibration_positive, calibration_negative = np.array([1, 2, 3, 4]), np.array([5, 3, 1, 0])  # best: edge 1
    positive, negative = np.array([0, 0, 5, 5]), np.array([4, 4, 2, 0])
    point = operating_point(calibration_positive, calibration_negative, positive, negative=negative, auc=0.9,
                            edges=edges)
    assert point.threshold == edges[1]
    assert point.calibration_f1 == pytest.approx(18 / 23)
    # On the evaluated counts at edge 1: TP 10, FN 0, FP 6, TN 4.
    np.testing.assert_array_equal(point.confusion, [[4, 6], [0, 10]])
    assert point.metrics.f1 == pytest.approx(20 / 26)
    assert point.metrics.recall == 1.0 and point.metrics.specificity == pytest.approx(0.4)
    assert point.metrics.auc == 0.9


def test_the_half_probability_edge_reproduces_the_argmax_confusion_matrix() -> None:
    """The default 100 logit-spaced bins have 0.5 as an edge, so argmax is one of the candidate thresholds."""
    from services.common.ml.classification_metrics import HISTOGRAM_BINS, confusion_at_edge, histogram_edges

    edges = histogram_edges()
    half = int(np.flatnonzero(np.isclose(edges, 0.5))[0])
    rng = np.random.default_rng(3)
    scores, truth = rng.uniform(0.01, 0.99, 400), rng.integers(0, 2, 400)
    scores = np.where(np.isclose(scores, 0.5), 0.51, scores)
    positive = np.histogram(scores[truth == 1], edges)[0]
    negative = np.histogram(scores[truth == 0], edges)[0]
    assert positive.size == HISTOGRAM_BINS
    np.testing.assert_array_equal(confusion_at_edge(positive, negative, half),
                                  confusion_matrix(truth, (scores > 0.5).astype(np.int64), 2))


@pytest.mark.parametrize("confusion", [[[40, 10], [15, 35]], [[20, 3, 2], [4, 15, 1], [0, 5, 10]]],
                         ids=["binary", "three classes"])
def test_f1_sampling_sd_is_the_spread_of_f1_over_multinomial_redraws(confusion: list[list[int]]) -> None:
    counts = np.array(confusion)
    draws = np.random.default_rng(7).multinomial(counts.sum(), counts.ravel() / counts.sum(), size=500)
    by_hand = np.std([metrics_from_confusion(d.reshape(counts.shape)).f1 for d in draws])
    assert f1_sampling_sd(counts, draws=500, seed=7) == pytest.approx(by_hand, rel=1e-9)


def test_f1_sampling_sd_halves_with_four_times_the_images_and_vanishes_without_spread() -> None:
    confusion = np.array([[40, 10], [15, 35]])
    assert f1_sampling_sd(4 * confusion) / f1_sampling_sd(confusion) == pytest.approx(0.5, abs=0.03)
    assert f1_sampling_sd([[0, 0], [0, 30]]) == 0.0  # every draw is all true positives
    assert f1_sampling_sd([[0, 0], [0, 0]]) == 0.0


def _two_models(classes: int, images: int, agree: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth and two models' predictions that are right about 80% of the time and share most errors."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, classes, images)
    wrong = (truth + rng.integers(1, classes, images)) % classes
    a = np.where(rng.random(images) < 0.8, truth, wrong)
    b = np.where(rng.random(images) < agree, a, np.where(rng.random(images) < 0.85, truth, wrong))
    return truth, a, b


@pytest.mark.parametrize("classes", [2, 3], ids=["binary", "three classes"])
def test_paired_f1_difference_is_b_minus_a_and_spreads_as_redrawn_images(classes: int) -> None:
    truth, a, b = _two_models(classes, 300, 0.7, seed=1)
    result = paired_f1_difference(truth, a, b, num_classes=classes, draws=400, seed=5)
    by_hand = (metrics_from_confusion(confusion_matrix(truth, b, classes)).f1
               - metrics_from_confusion(confusion_matrix(truth, a, classes)).f1)
    assert result.difference == pytest.approx(by_hand, abs=1e-12)
    # The same multinomial draws over the (truth, a, b) cells, each turned into two confusion matrices by hand.
    joint = np.zeros((classes,) * 3, dtype=np.int64)
    for t, p, q in zip(truth, a, b):
        joint[t, p, q] += 1
    draws = np.random.default_rng(5).multinomial(truth.size, joint.ravel() / truth.size, size=400)
    differences = [metrics_from_confusion(d.reshape(joint.shape).sum(axis=1)).f1
                   - metrics_from_confusion(d.reshape(joint.shape).sum(axis=2)).f1 for d in draws]
    assert result.sd == pytest.approx(np.std(differences), rel=1e-9)
    assert (result.low, result.high) == pytest.approx(tuple(np.percentile(differences, [2.5, 97.5])), rel=1e-9)


def test_paired_spread_is_below_that_of_two_independent_f1s_and_zero_for_the_same_model() -> None:
    truth, a, b = _two_models(2, 500, 0.9, seed=2)
    paired = paired_f1_difference(truth, a, b, num_classes=2)
    independent = np.hypot(f1_sampling_sd(confusion_matrix(truth, a, 2)), f1_sampling_sd(confusion_matrix(truth, b, 2)))
    assert paired.sd < 0.6 * independent
    assert paired.low < paired.difference < paired.high
    same = paired_f1_difference(truth, a, a, num_classes=2)
    assert (same.difference, same.sd, same.low, same.high) == (0.0, 0.0, 0.0, 0.0)


def test_paired_f1_difference_refuses_unequal_lengths() -> None:
    with pytest.raises(ValueError, match="equal length"):
        paired_f1_difference([0, 1], [0, 1], [0], num_classes=2)
