import numpy as np
import pytest

from services.common.noise import NoiseKind
from services.common.update_codec import decode_mean_update, encode_update, plan_quantization


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
