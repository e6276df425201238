"""The classifier head refit by linear discriminant analysis on pooled feature moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.common.ml.head_refit import (
    FeatureMoments,
    classifier_head,
    feature_moments,
    head_positions,
    lda_head,
    moments_from_statistics,
    moments_of,
    set_head,
    statistics_dimension,
    statistics_vector,
)
from services.common.ml.model_spec import flatten_state, parameter_spec, restore_state
from services.common.ml.models import build_model


def _moments(means: list[list[float]], covariance: list[list[float]], counts: list[int]) -> FeatureMoments:
    """Moments of samples with these class means and exactly this pooled within-class covariance."""
    mu, sigma, n = np.array(means, float), np.array(covariance, float), np.array(counts, float)
    second = (n[:, None] * mu).T @ mu + n.sum() * sigma
    return FeatureMoments(n, n[:, None] * mu, second)


def test_one_feature_by_hand() -> None:
    # Class 0 at {0, 2}, class 1 at {4, 6}: means 1 and 5, within-class variance (1+1+1+1)/4 = 1.
    # w_c = mu_c = 1, 5; b_c = -mu_c^2 / 2 + log(1/2) = -0.5, -12.5 (+ log 1/2); centred: w = -2, +2,
    # b = +6, -6, so logit_1 - logit_0 = 4x - 12: the boundary is x = 3, midway between the means.
    x = np.array([[0.0], [2.0], [4.0], [6.0]])
    moments = FeatureMoments(np.array([2.0, 2.0]), np.array([[2.0], [10.0]]), x.T @ x)
    weight, bias = lda_head(moments, shrinkage=0.0)
    np.testing.assert_allclose(weight, [[-2.0], [2.0]])
    np.testing.assert_allclose(bias, [6.0, -6.0])


def test_direction_follows_the_inverse_covariance() -> None:
    # Means differ along x only, but the features are correlated: Sigma = [[2, 1], [1, 2]], whose inverse is
    # [[2, -1], [-1, 2]] / 3, so the discriminant is Sigma^-1 (mu_1 - mu_0) = (2, -1) / 3, not (1, 0).
    moments = _moments([[0.0, 0.0], [1.0, 0.0]], [[2.0, 1.0], [1.0, 2.0]], [50, 50])
    weight, bias = lda_head(moments, shrinkage=0.0)
    np.testing.assert_allclose(weight[1] - weight[0], [2 / 3, -1 / 3], atol=1e-12)
    midpoint = np.array([0.5, 0.0])
    assert (weight[1] - weight[0]) @ midpoint + bias[1] - bias[0] == pytest.approx(0.0, abs=1e-12)


def test_the_prior_moves_the_boundary_by_its_log_ratio() -> None:
    balanced = lda_head(_moments([[0.0], [2.0]], [[1.0]], [100, 100]), shrinkage=0.0)
    skewed = lda_head(_moments([[0.0], [2.0]], [[1.0]], [300, 100]), shrinkage=0.0)
    # The variance is the same (1), so the slope is 2 in both; the intercept falls by log(300/100).
    margin = [b[1] - b[0] for _, b in (balanced, skewed)]
    assert margin[0] - margin[1] == pytest.approx(np.log(3.0), rel=1e-9)


def test_shrinkage_pulls_the_covariance_towards_its_mean_variance() -> None:
    moments = _moments([[0.0, 0.0], [1.0, 0.0]], [[2.0, 1.0], [1.0, 2.0]], [50, 50])
    weight, _ = lda_head(moments, shrinkage=1.0)  # Sigma becomes 2 I: the direction is the mean difference / 2
    np.testing.assert_allclose(weight[1] - weight[0], [0.5, 0.0], atol=1e-12)
    with pytest.raises(ValueError, match="shrinkage"):
        lda_head(moments, shrinkage=1.5)


def test_one_class_only_is_refused() -> None:
    with pytest.raises(ValueError, match="two classes"):
        lda_head(_moments([[0.0], [2.0]], [[1.0]], [10, 0]))


def test_the_head_does_not_depend_on_the_moments_scale() -> None:
    # A secure sum of vectors scaled to the clip norm holds weighted counts far below one image.
    moments = _moments([[0.0, 1.0], [2.0, 0.0]], [[1.0, 0.3], [0.3, 2.0]], [30, 10])
    weight, bias = lda_head(moments)
    for factor in (1e-4, 1e3):
        scaled = FeatureMoments(factor * moments.counts, factor * moments.sums, factor * moments.second)
        for got, want in zip(lda_head(scaled), (weight, bias)):
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def test_a_class_counted_at_noise_level_is_absent() -> None:
    # Three classes, the third held by no hospital: a secure sum decodes its count and sums to noise.
    two = _moments([[0.0], [2.0]], [[1.0]], [30, 10])
    three = FeatureMoments(np.array([30.0, 10.0, 3e-9]), np.vstack([two.sums, [[5e-9]]]), two.second)
    weight, bias = lda_head(three)
    np.testing.assert_allclose(weight[1] - weight[0], *(lda_head(two)[0][1] - lda_head(two)[0][0]))
    assert bias[2] < -1e3 and np.all(np.isfinite(weight))


def test_moments_add_across_hospitals() -> None:
    """Two hospitals' moments added are the moments of their images pooled: what a secure sum needs."""
    rng = np.random.default_rng(1)
    features = [torch.from_numpy(rng.normal(size=(n, 3))) for n in (7, 5)]
    labels = [torch.from_numpy(rng.integers(0, 2, n)) for n in (7, 5)]
    a, b = (moments_of(f, y, 2) for f, y in zip(features, labels))
    pooled = moments_of(torch.cat(features), torch.cat(labels), 2)
    for total, expected in ((a + b).counts, pooled.counts), ((a + b).sums, pooled.sums), ((a + b).second, pooled.second):
        np.testing.assert_allclose(total, expected)


def test_feature_moments_are_those_of_the_penultimate_features() -> None:
    model = build_model("tiny", 2, seed=3)
    images = torch.rand(10, 1, 16, 16)
    labels = torch.tensor([0, 1, 1, 0, 1, 1, 1, 0, 1, 1])
    moments = feature_moments(model, images, labels, num_classes=2, device=torch.device("cpu"), batch_size=4)
    model.eval()
    with torch.no_grad():
        features = torch.flatten(model[1].features(images.expand(-1, 3, -1, -1)), 1).double().numpy()
    np.testing.assert_array_equal(moments.counts, [3, 7])
    np.testing.assert_allclose(moments.sums[1], features[labels.numpy() == 1].sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(moments.second, features.T @ features, rtol=1e-5)


def test_a_refit_head_separates_what_the_features_separate() -> None:
    """Features whose class shows in one direction only: a random head scores near chance, the refit one
    nearly perfectly."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(8, 2))
    labels = torch.randint(0, 2, (400,))
    features = torch.randn(400, 8)
    features[:, 3] += 3.0 * labels
    moments = feature_moments(model, features, labels, num_classes=2, device=torch.device("cpu"))
    set_head(model, *lda_head(moments))
    with torch.no_grad():
        accuracy = (model(features).argmax(dim=1) == labels).float().mean().item()
    assert accuracy > 0.9
    assert classifier_head(model) is model[1]
    with pytest.raises(ValueError, match="shape"):
        set_head(model, np.zeros((3, 8)), np.zeros(3))


def test_a_statistics_vector_holds_the_moments_and_its_layout_is_fixed() -> None:
    rng = np.random.default_rng(4)
    features = torch.from_numpy(rng.normal(size=(9, 3)))
    labels = torch.tensor([0, 1, 2, 2, 1, 0, 0, 2, 2])
    moments = moments_of(features, labels, 3)
    vector = statistics_vector(moments)
    # 3 counts, 3 x 3 class sums, the 6 values of a 3 x 3 upper triangle.
    assert vector.shape == (statistics_dimension(3, 3),) == (3 + 9 + 6,)
    assert vector[:3].tolist() == [3, 2, 4]
    np.testing.assert_allclose(vector[3:6], features[labels == 0].sum(dim=0).numpy())
    restored = moments_from_statistics(vector, 3, 3)
    np.testing.assert_array_equal(restored.counts, moments.counts)
    np.testing.assert_allclose(restored.sums, moments.sums)
    np.testing.assert_allclose(restored.second, moments.second)
    with pytest.raises(ValueError, match="take 18 values"):
        moments_from_statistics(vector[:-1], 3, 3)


def test_a_scaled_statistics_sum_fits_the_same_head_as_its_images_weighted() -> None:
    # A hospital's scale weighs its own images: LDA on a sum of scaled vectors is LDA on images so weighted.
    a, b = _moments([[0.0, 1.0], [2.0, 0.0]], [[1.0, 0.3], [0.3, 2.0]], [30, 10]), \
        _moments([[1.0, 1.0], [3.0, -1.0]], [[2.0, 0.0], [0.0, 1.0]], [5, 25])
    weighted = FeatureMoments(0.5 * a.counts + 2.0 * b.counts, 0.5 * a.sums + 2.0 * b.sums,
                              0.5 * a.second + 2.0 * b.second)
    summed = moments_from_statistics(0.5 * statistics_vector(a) + 2.0 * statistics_vector(b), 2, 2)
    for got, want in zip(lda_head(summed), lda_head(weighted)):
        np.testing.assert_allclose(got, want)


def test_head_positions_install_the_head_where_the_model_keeps_it() -> None:
    model = build_model("tiny", 2, 0)
    spec = parameter_spec(model.state_dict())
    positions = head_positions(model, spec)
    head = classifier_head(model)
    assert (positions.num_classes, positions.features) == (2, head.in_features)
    weights = flatten_state(model.state_dict())
    weight = np.arange(2 * head.in_features, dtype=float).reshape(2, -1)
    installed = positions.install(weights, weight, np.array([1.5, -1.5]))
    model.load_state_dict(restore_state(model.state_dict(), installed, spec))
    np.testing.assert_array_equal(classifier_head(model).weight.detach().numpy(), weight)
    np.testing.assert_array_equal(classifier_head(model).bias.detach().numpy(), [1.5, -1.5])
    unchanged = np.ones(weights.size, dtype=bool)
    unchanged[positions.weight] = False
    unchanged[positions.bias] = False
    np.testing.assert_array_equal(installed[unchanged], weights[unchanged])
    with pytest.raises(ValueError, match="shape"):
        positions.install(weights, weight[:, :-1], np.zeros(2))
