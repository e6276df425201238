import math

import numpy as np
import pytest

from services.common.secure_sum.noise import NoiseKind, node_noise_share, sample_noise

SAMPLES = 400_000


@pytest.mark.parametrize("variance", [0.5, 4.0, 60.0])
def test_skellam_noise_has_zero_mean_and_configured_variance(variance: float) -> None:
    noise = sample_noise(NoiseKind.SKELLAM, variance, SAMPLES, np.random.default_rng(1))
    assert noise.dtype == np.int64
    # Tolerance: 5 standard errors. SE(mean) = sqrt(var/n); SE(var) ~ var*sqrt(2/n) (+ kurtosis term 1/var).
    assert abs(noise.mean()) < 5 * math.sqrt(variance / SAMPLES)
    se_var = math.sqrt((2 * variance**2 + variance) / SAMPLES)
    assert abs(noise.var() - variance) < 5 * se_var


def test_poisson_noise_has_mean_and_variance_lambda() -> None:
    lam = 9.0
    noise = sample_noise(NoiseKind.POISSON, lam, SAMPLES, np.random.default_rng(2))
    assert abs(noise.mean() - lam) < 5 * math.sqrt(lam / SAMPLES)
    assert abs(noise.var() - lam) < 5 * math.sqrt((2 * lam**2 + lam) / SAMPLES)


def test_quorum_of_shares_carries_the_total_variance() -> None:
    total, quorum = 30.0, 3
    share = node_noise_share(total, quorum)
    rng = np.random.default_rng(3)
    summed = sum(sample_noise(NoiseKind.SKELLAM, share, SAMPLES, rng) for _ in range(quorum))
    assert abs(summed.var() - total) < 5 * math.sqrt((2 * total**2 + total) / SAMPLES)


def test_no_noise_is_zero() -> None:
    assert not sample_noise(NoiseKind.NONE, 10.0, 100, np.random.default_rng(0)).any()
