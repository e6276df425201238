"""Renyi-DP of the multi-dimensional Skellam mechanism, as pure functions.

Agarwal, Kairouz and Liu, "The Skellam Mechanism for Differentially Private
Federated Learning", NeurIPS 2021, Theorem 3.5 / Corollary 3.6: with Skellam noise
of per-coordinate variance mu (Poisson(mu/2) - Poisson(mu/2)) on an integer query
of L1 sensitivity D1 and L2 sensitivity D2, for every integer alpha > 1,

    eps(alpha) <= alpha * D2^2 / (2 mu) + min( ((2 alpha - 1) D2^2 + 6 D1) / (4 mu^2),
                                               3 D1 / (2 mu) ).

RDP composes by addition over rounds. Conversion to (eps, delta) uses Balle et al.,
"Hypothesis Testing Interpretations and Renyi Differential Privacy", AISTATS 2020:

    eps = rdp(alpha) + log((alpha - 1) / alpha) - (log(delta) + log(alpha)) / (alpha - 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


RDP_ORDERS: tuple[int, ...] = tuple(range(2, 64)) + tuple(range(64, 257, 8)) + (320, 512, 1024)


def skellam_rdp(alpha: int, l1_sensitivity: float, l2_sensitivity: float, variance: float) -> float:
    if alpha <= 1:
        raise ValueError(f"RDP order must be an integer above 1, got {alpha}")
    if variance <= 0:
        return math.inf
    d2sq = l2_sensitivity**2
    leading = alpha * d2sq / (2 * variance)
    correction = min(
        ((2 * alpha - 1) * d2sq + 6 * l1_sensitivity) / (4 * variance**2),
        3 * l1_sensitivity / (2 * variance),
    )
    return leading + correction


def rdp_to_epsilon(rdp: Sequence[float], orders: Sequence[int], delta: float) -> float:
    if not 0 < delta < 1:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    candidates = [
        r + math.log((a - 1) / a) - (math.log(delta) + math.log(a)) / (a - 1)
        for r, a in zip(rdp, orders, strict=True)
    ]
    return max(0.0, min(candidates))


def integer_sensitivities(l2_bound: float, dimension: int) -> tuple[float, float]:
    """(L1, L2) sensitivity of an integer vector whose L2 norm is at most `l2_bound`.

    Replacing one node's vector moves the sum by at most one such vector (add/remove
    neighbours). For integers, L1 <= min(sqrt(d) L2, L2^2): every non-zero |x| <= x^2.
    """
    return min(math.sqrt(dimension) * l2_bound, l2_bound * l2_bound), l2_bound
