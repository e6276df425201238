import numpy as np
import pytest

from services.common.ml.head_refit import FeatureMoments, lda_head, moments_from_statistics, statistics_vector
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import (
    decode_mean_update,
    encode_update,
    plan_quantization,
    plan_statistics,
    received_update,
)


def _plan(noise: NoiseKind, variance: float, dimension: int = 5000):  # type: ignore[no-untyped-def]
    return plan_quantization(dimension, clip_norm=1.0, bits=10, max_participants=8, min_participants=3,
                             noise_kind=noise, noise_variance=variance)


def test_mean_of_noiseless_encodings_is_close_to_the_true_mean() -> None:
    plan = _plan(NoiseKind.NONE, 0.0)
    rng = np.random.default_rng(0)
    updates = [rng.normal(0, 1 / np.sqrt(plan.dimension), plan.dimension) * 0.5 for _ in range(5)]
    field_sum = np.mod(sum(encode_update(u, plan, rng) for u in updates), 1 << plan.bits)
    decoded = decode_mean_update(field_sum, plan, participants=5)
    true_mean = np.mean(updates, axis=0)
    # Randomized rounding error per coordinate of the mean: std <= 1/(2 scale sqrt(n)).
    bound = 6 / (2 * plan.scale * np.sqrt(5))
    assert np.max(np.abs(decoded - true_mean)) < bound


def test_poisson_noise_mean_is_removed_by_the_decoder() -> None:
    plan = _plan(NoiseKind.POISSON, 30.0)
    rng = np.random.default_rng(1)
    zero = np.zeros(plan.dimension)
    field_sum = np.mod(sum(encode_update(zero, plan, rng) for _ in range(4)), 1 << plan.bits)
    decoded = decode_mean_update(field_sum, plan, participants=4)
    assert abs(decoded.mean()) < 5 * np.sqrt(4 * 10.0 / plan.dimension) / (4 * plan.scale)


def test_skellam_noise_of_the_quorum_reaches_the_decoded_sum() -> None:
    plan = _plan(NoiseKind.SKELLAM, 60.0)
    rng = np.random.default_rng(2)
    zero = np.zeros(plan.dimension)
    field_sum = np.mod(sum(encode_update(zero, plan, rng) for _ in range(3)), 1 << plan.bits)
    summed = decode_mean_update(field_sum, plan, participants=3) * 3 * plan.scale
    assert summed.var() == pytest.approx(60.0, rel=0.1)


def test_sum_of_max_participants_never_wraps_the_field() -> None:
    plan = _plan(NoiseKind.SKELLAM, 60.0)
    assert 8 * plan.coordinate_bound + 6 * np.sqrt(60.0 * 8 / 3) < (1 << (plan.bits - 1))


def test_encode_refuses_wrong_dimension() -> None:
    with pytest.raises(ValueError, match="plan expects"):
        encode_update(np.zeros(3), _plan(NoiseKind.NONE, 0.0), np.random.default_rng(0))


def test_too_much_noise_for_the_field_is_refused() -> None:
    with pytest.raises(ValueError, match="no room"):
        _plan(NoiseKind.SKELLAM, 1e6)


def _hospital_statistics(rng: np.random.Generator, count: int, opacity_share: float, dim: int = 32) -> np.ndarray:
    """Feature statistics like a network's: non-negative features sharing a large mean, a small class contrast."""
    labels = (rng.random(count) < opacity_share).astype(np.int64)
    features = 3.0 + 0.1 * labels[:, None] * np.linspace(1, -1, dim) + 0.3 * rng.normal(size=(count, dim))
    one_hot = np.eye(2)[labels]
    return statistics_vector(FeatureMoments(one_hot.sum(axis=0), one_hot.T @ features, features.T @ features))


def _decoded_sum(vectors: list[np.ndarray], plan, rng: np.random.Generator) -> np.ndarray:  # type: ignore[no-untyped-def]
    field_sum = np.mod(sum(encode_update(v, plan, rng) for v in vectors), 1 << plan.bits)
    return decode_mean_update(field_sum, plan, participants=len(vectors)) * len(vectors)


def test_statistics_plan_never_clamps_and_keeps_the_head_that_exact_statistics_fit() -> None:
    rng = np.random.default_rng(7)
    vectors = [_hospital_statistics(rng, 400, share) for share in (0.05, 0.3, 0.5, 0.7, 0.95)]
    dimension = vectors[0].size
    vectors = [v * (5.0 / np.linalg.norm(v)) for v in vectors]  # as a node scales them to the clip norm
    exact = lda_head(moments_from_statistics(np.sum(vectors, axis=0), 2, 32))
    wide = plan_statistics(dimension, clip_norm=5.0, bits=37, max_participants=8, min_participants=3,
                           noise_kind=NoiseKind.SKELLAM, noise_variance=16.0)
    # The clip norm sits at the coordinate bound: a vector whose whole norm is one coordinate is not clamped.
    spike = np.zeros(dimension)
    spike[0] = 5.0
    assert received_update(spike, wide)[0] == pytest.approx(5.0)
    decoded = _decoded_sum(vectors, wide, rng)
    through = lda_head(moments_from_statistics(decoded, 2, 32))
    assert np.linalg.norm(through[0] - exact[0]) < 1e-4 * np.linalg.norm(exact[0])
    np.testing.assert_allclose(through[1], exact[1], atol=1e-4)  # the bias sits near 0 here: absolute
    # An update's plan (10-bit fields, coordinates clamped at 12 RMS) loses the class counts the prior and the
    # means divide by: they are small beside the second moments that carry the vector's norm.
    narrow = plan_quantization(dimension, clip_norm=5.0, bits=10, max_participants=8, min_participants=3,
                               noise_kind=NoiseKind.SKELLAM, noise_variance=16.0)
    counts = np.sum(vectors, axis=0)[:2]
    np.testing.assert_allclose(decoded[:2], counts, rtol=1e-6)
    assert np.max(np.abs(_decoded_sum(vectors, narrow, rng)[:2] - counts) / counts) > 0.5
