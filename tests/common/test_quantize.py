import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from services.common.secure_sum.quantize import (
    _NORM_BLOCK,
    clip_l2,
    l2_norm,
    randomized_round,
    round_piece,
    rounded_l2_bound,
    scale_and_clamp,
)

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@settings(max_examples=80, deadline=None)
@given(update=hnp.arrays(np.float64, st.integers(1, 300), elements=finite), clip=st.floats(1e-3, 100))
def test_clip_bounds_norm_and_keeps_direction(update: np.ndarray, clip: float) -> None:
    clipped = clip_l2(update, clip)
    assert np.linalg.norm(clipped) <= clip * (1 + 1e-9)
    if np.linalg.norm(update) <= clip:
        assert np.array_equal(clipped, update)
    else:
        # Same direction: clipped is a positive multiple of update.
        ratio = clip / np.linalg.norm(update)
        assert np.allclose(clipped, update * ratio)


def test_randomized_rounding_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    values = np.full(200_000, 2.3)
    rounded = randomized_round(values, rng)
    assert set(np.unique(rounded)) == {2, 3}
    # mean of Bernoulli(0.3) over 2e5 draws: std 0.001; allow 5 sigma.
    assert abs(rounded.mean() - 2.3) < 5 * math.sqrt(0.3 * 0.7 / values.size)


@settings(max_examples=40, deadline=None)
@given(update=hnp.arrays(np.float64, st.integers(1, 500), elements=finite), seed=st.integers(0, 2**32 - 1),
       pieces=st.integers(1, 9))
def test_rounding_in_pieces_respects_clamp_and_the_k_piece_norm_bound(
    update: np.ndarray, seed: int, pieces: int
) -> None:
    clip, scale, bound, beta = 1.5, 40.0, 25, math.exp(-0.5)
    rng = np.random.default_rng(seed)
    scaled = scale_and_clamp(update, clip, scale, bound)
    parts = np.array_split(scaled, pieces)
    q = np.concatenate([round_piece(part, beta, rng) for part in parts])
    assert q.dtype == np.int64
    assert np.abs(q).max(initial=0) <= bound
    assert np.linalg.norm(q) <= rounded_l2_bound(clip * scale, update.size, beta, pieces=len(parts))


def test_k_piece_bound_is_looser_than_the_single_piece_bound() -> None:
    assert rounded_l2_bound(100.0, 10_000, 0.5, pieces=16) > rounded_l2_bound(100.0, 10_000, 0.5)


def test_the_norm_squared_a_block_at_a_time_counts_every_value_of_every_block() -> None:
    # Over three blocks and a partial one: a value left out of any block, or a block counted twice, moves the norm by
    # far more than the tolerance (each value's square is about 1/n of the total; n is about 8e5).
    rng = np.random.default_rng(7)
    for values in (rng.normal(0, 0.01, 3 * _NORM_BLOCK + 5).astype(np.float32),
                   rng.integers(-1000, 1000, _NORM_BLOCK + 1).astype(np.int64),
                   rng.normal(0, 1, (4, _NORM_BLOCK // 2 + 3))):
        exact = math.sqrt(math.fsum(float(v) ** 2 for v in values.reshape(-1)))
        assert math.isclose(l2_norm(values), exact, rel_tol=1e-12)
    assert l2_norm(np.zeros(0, np.float32)) == 0.0
