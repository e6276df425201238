"""Clip a float update, scale it and round it to integers without bias.

Conditional randomized rounding follows Kairouz, Liu and Steinke, "The Distributed
Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation"
(ICML 2021), Section 4: each coordinate rounds up with probability equal to its
fractional part, and a draw whose L2 norm exceeds a high-probability bound is
re-drawn, so the sensitivity the accountant uses is a hard bound.
"""

from __future__ import annotations

import math

import numpy as np

MAX_ROUNDING_DRAWS = 32


# Values squared at a time by `l2_norm`: a float64 copy of a whole ResNet-50 update (188 MB, page-faulted in anew on
# each call) took 0.27 s of a node's critical path on the 2-core machine; blocks of this size, 0.03 s.
_NORM_BLOCK = 1 << 18


def l2_norm(values: np.ndarray) -> float:
    # A ufunc reduction, not BLAS: OpenBLAS threads spin after each call and would
    # steal the cores the encryption workers run on. Squared in float64 a block at a time, into one buffer.
    flat = values.reshape(-1)
    squares = np.empty(min(_NORM_BLOCK, flat.size), np.float64)
    total = 0.0
    for start in range(0, flat.size, _NORM_BLOCK):
        block = flat[start:start + _NORM_BLOCK]
        np.square(block, out=squares[:block.size], dtype=np.float64)
        total += float(np.add.reduce(squares[:block.size]))
    return math.sqrt(total)


def clip_factor(update: np.ndarray, clip_norm: float) -> float:
    """What `update` is multiplied by so that its L2 norm is at most `clip_norm`: 1 when it already is."""
    if clip_norm <= 0:
        raise ValueError(f"clip norm must be positive, got {clip_norm}")
    norm = l2_norm(update)
    return 1.0 if norm <= clip_norm or norm == 0.0 else clip_norm / norm


def clip_l2(update: np.ndarray, clip_norm: float) -> np.ndarray:
    """`update` scaled down, if needed, so its L2 norm is at most `clip_norm` (a new float64 array)."""
    return _clipped(update, clip_factor(update, clip_norm))


def _clipped(values: np.ndarray, factor: float) -> np.ndarray:
    """A new float64 copy of `values` times a clip factor (untouched at 1)."""
    clipped = values.astype(np.float64, copy=True)
    if factor != 1.0:
        clipped *= factor
    return clipped


def rounded_l2_bound(scaled_norm: float, dimension: int, beta: float, pieces: int = 1) -> float:
    """L2 norm that conditional randomized rounding never exceeds (DDG paper, Thm 2).

    One piece: sqrt(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2)); a random rounding
    of a vector of norm <= c exceeds it with probability at most beta.
    K pieces, each rounded conditionally on its own bound: the squared bounds add up,
    and by Cauchy-Schwarz sum(c_k) <= sqrt(K) c and sum(sqrt(d_k)) <= sqrt(K d), so the
    cross term grows by sqrt(K) at most.
    """
    c = scaled_norm
    cross = math.sqrt(2 * math.log(1 / beta)) * math.sqrt(pieces) * (c + math.sqrt(dimension) / 2)
    return math.sqrt(c * c + dimension / 4 + cross)


def randomized_round(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unbiased rounding: floor(x) + Bernoulli(frac(x)), so E[round(x)] = x."""
    floor = np.floor(values)
    up = rng.random(values.shape) < (values - floor)
    rounded: np.ndarray = floor.astype(np.int64)
    rounded += up
    return rounded


def conditional_randomized_round(
    values: np.ndarray, norm_bound: float, rng: np.random.Generator
) -> np.ndarray:
    """Randomized rounding re-drawn until the result's L2 norm is within `norm_bound`."""
    for _ in range(MAX_ROUNDING_DRAWS):
        rounded = randomized_round(values, rng)
        if l2_norm(rounded) <= norm_bound:  # squared in float64 by the ufunc, without a float64 copy
            return rounded
    raise ValueError(
        f"randomized rounding exceeded the norm bound {norm_bound:.1f} in {MAX_ROUNDING_DRAWS} draws; "
        "the input was not clipped to the configured norm"
    )


def scale_and_clamp(update: np.ndarray, clip_norm: float, scale: float, coordinate_bound: int) -> np.ndarray:
    """Clip to L2 `clip_norm`, scale by `scale`, clamp every coordinate to +-`coordinate_bound`.

    The clamp keeps the sum of all nodes inside the modular field; clamping only
    shrinks coordinates, so the L2 sensitivity is unchanged.
    """
    return scale_and_clamp_piece(update, clip_factor(update, clip_norm), scale, coordinate_bound)


def scale_and_clamp_piece(piece: np.ndarray, factor: float, scale: float, coordinate_bound: int) -> np.ndarray:
    """A piece of an update clipped by the whole update's `clip_factor`, scaled and clamped: element by element
    what `scale_and_clamp` gives the whole, so the pieces can be scaled apart (in the encryption workers)."""
    scaled = _clipped(piece, factor)
    scaled *= scale
    return np.clip(scaled, -coordinate_bound, coordinate_bound, out=scaled)


def round_piece(scaled_piece: np.ndarray, beta: float, rng: np.random.Generator) -> np.ndarray:
    """Conditional randomized rounding of one piece against its own norm bound."""
    bound = rounded_l2_bound(l2_norm(scaled_piece), scaled_piece.size, beta)
    return conditional_randomized_round(scaled_piece, bound, rng)
