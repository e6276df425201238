"""Integer noise of the Poisson family, added by each node as its share.

Skellam noise (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021): Poisson(mu/2) - Poisson(mu/2) per
coordinate, variance mu. Sums of independent Skellams are Skellam, so shares of
variance mu/m from any m nodes add up to exactly the configured mechanism.

Centered Poisson: each node adds Poisson(lambda); the decoder subtracts the known
mean (participants * lambda). It is integer and divisible like Skellam, but it is
one-sided, and this project implements no privacy bound for it (see the accountant).
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np


class NoiseKind(StrEnum):
    SKELLAM = "skellam"
    POISSON = "poisson"
    NONE = "none"


def node_noise_share(total_variance: float, min_participants: int) -> float:
    """Variance each node adds so that any quorum of `min_participants` carries the total."""
    if min_participants < 1:
        raise ValueError(f"min_participants must be at least 1, got {min_participants}")
    if total_variance < 0:
        raise ValueError(f"noise variance must be non-negative, got {total_variance}")
    return total_variance / min_participants


def sample_noise(kind: NoiseKind, variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One node's integer noise vector of the given per-coordinate variance."""
    if kind is NoiseKind.NONE or variance == 0:
        return np.zeros(size, dtype=np.int64)
    if kind is NoiseKind.SKELLAM:
        return rng.poisson(variance / 2, size) - rng.poisson(variance / 2, size)
    if kind is NoiseKind.POISSON:
        # Not centered here: subtracting a non-integer mean would leave the integers.
        return rng.poisson(variance, size).astype(np.int64)
    raise ValueError(f"unknown noise kind {kind!r}")


def noise_mean(kind: NoiseKind, variance_per_node: float, participants: int) -> float:
    """Mean of the summed noise, which the decoder removes (non-zero only for Poisson)."""
    return variance_per_node * participants if kind is NoiseKind.POISSON else 0.0
