"""Integer noise of the Poisson family, added by each node as its share.

Skellam noise (Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially
Private Federated Learning", NeurIPS 2021): Poisson(mu/2) - Poisson(mu/2) per
coordinate, variance mu. Sums of independent Skellams are Skellam, so shares of
variance mu/m from any m nodes add up to exactly the configured mechanism.

Centered Poisson: each node adds Poisson(lambda); the decoder subtracts the known
mean (participants * lambda). It is integer and divisible like Skellam, but it is
one-sided, and this project implements no privacy bound for it (see the accountant).

Sampling uses Walker's alias method over the exact probability mass function
(computed in log space), truncated where the remaining tail mass is below
TAIL_MASS: twice as fast as numpy's Poisson sampler for the small means used here,
which matters for 23.5M coordinates per round.
"""

from __future__ import annotations

import math
from enum import StrEnum
from functools import lru_cache

import numpy as np

TAIL_MASS = 1e-18


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


def poisson_pmf(mean: float) -> np.ndarray:
    """P(X = j) for j = 0..J, with J where the tail mass drops below TAIL_MASS."""
    span = int(mean + 12 * math.sqrt(mean) + 30)
    j = np.arange(span + 1, dtype=np.float64)
    log_pmf = -mean + j * math.log(mean) - np.array([math.lgamma(x + 1) for x in j])
    pmf = np.exp(log_pmf)
    negligible_tail = int(np.count_nonzero(np.cumsum(pmf[::-1]) < TAIL_MASS))
    kept: np.ndarray = pmf[: pmf.size - negligible_tail]
    return kept


@lru_cache(maxsize=16)
def _alias_table(kind: NoiseKind, variance: float) -> tuple[np.ndarray, np.ndarray, int]:
    """(probability, alias, offset) of Walker's alias method for the noise's pmf."""
    if kind is NoiseKind.SKELLAM:
        half = poisson_pmf(variance / 2)
        pmf = np.convolve(half, half[::-1])  # index i is value i - (len(half) - 1)
        offset = half.size - 1
    else:
        pmf = poisson_pmf(variance)
        offset = 0
    pmf = pmf / pmf.sum()
    size = pmf.size
    scaled = pmf * size
    probability = np.ones(size)
    alias = np.arange(size)
    small = [i for i in range(size) if scaled[i] < 1.0]
    large = [i for i in range(size) if scaled[i] >= 1.0]
    while small and large:
        low, high = small.pop(), large.pop()
        probability[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        (small if scaled[high] < 1.0 else large).append(high)
    return probability, alias, offset


def sample_noise(kind: NoiseKind, variance: float, size: int, rng: np.random.Generator) -> np.ndarray:
    """One node's integer noise vector of the given per-coordinate variance."""
    if kind is NoiseKind.NONE or variance == 0:
        return np.zeros(size, dtype=np.int64)
    if kind not in (NoiseKind.SKELLAM, NoiseKind.POISSON):
        raise ValueError(f"unknown noise kind {kind!r}")
    probability, alias, offset = _alias_table(kind, float(variance))
    # One uniform per coordinate: its integer part picks the column, its fraction the side.
    position = rng.random(size) * probability.size
    column = position.astype(np.int64)
    keep = (position - column) < probability[column]
    # Poisson is not centered here: subtracting a non-integer mean would leave the integers.
    return np.where(keep, column, alias[column]).astype(np.int64) - offset


def noise_mean(kind: NoiseKind, variance_per_node: float, participants: int) -> float:
    """Mean of the summed noise, which the decoder removes (non-zero only for Poisson)."""
    return variance_per_node * participants if kind is NoiseKind.POISSON else 0.0
