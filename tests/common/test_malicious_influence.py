"""How far one malicious node moves the mean: measured against the aggregator's bound on a decrypted sum.

Out of scope as a guarantee (no range proofs), stated with numbers: a node may send any field values it likes,
wrap-around included, but a sum whose norm exceeds what the participants' clipped uploads and the noise can make
is refused (`sum_norm_bound`). Here four honest nodes send full-size updates (norm C, random directions) and the
fifth the largest push along one direction that still passes the check, found by bisection.
"""

from __future__ import annotations

import numpy as np

from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import field_offset, to_centered, to_modular
from services.common.secure_sum.quantize import l2_norm
from services.common.secure_sum.update_codec import decode_mean_update, encode_update, plan_quantization, sum_norm_bound

NODES, DIMENSION, CLIP = 5, 100_000, 10.0
PLAN = plan_quantization(DIMENSION, CLIP, 10, max_participants=8, min_participants=3, noise_kind=NoiseKind.SKELLAM,
                         noise_variance=16.0)


def _passes(field_sum: np.ndarray) -> bool:
    signed = to_centered(field_sum - NODES * field_offset(PLAN.bits), PLAN.bits).astype(np.float64)
    return l2_norm(signed) <= sum_norm_bound(PLAN, NODES)


def _largest_push(honest: np.ndarray, direction: np.ndarray) -> float:
    """The largest norm (model units) of a malicious upload along `direction` whose sum still passes."""
    low, high = 0.0, 1e4 * CLIP
    for _ in range(60):
        middle = (low + high) / 2
        fields = to_modular(np.rint(direction * middle * PLAN.scale).astype(np.int64) + field_offset(PLAN.bits),
                            PLAN.bits)
        low, high = (middle, high) if _passes((honest + fields) % (1 << PLAN.bits)) else (low, middle)
    return low


def test_one_malicious_node_moves_the_mean_by_at_most_eight_honest_nodes_worth() -> None:
    rng = np.random.default_rng(0)
    updates = [rng.normal(size=DIMENSION) for _ in range(NODES - 1)]
    updates = [u * (CLIP / np.linalg.norm(u)) for u in updates]
    honest = np.sum([encode_update(u, PLAN, rng).astype(np.int64) for u in updates], axis=0)
    direction = rng.normal(size=DIMENSION)
    direction /= np.linalg.norm(direction)
    push = _largest_push(honest, direction)
    honest_most = CLIP / NODES  # the farthest one honest node can move the mean
    influence = push / NODES / honest_most
    # Measured 7.2 here (printed with -s): the bound allows n clipped uploads, their rounding and the noise's tail,
    # so one node may fill what the others leave. Without the check it could wrap the field (over 100 times).
    print(f"one malicious node moves the mean {influence:.2f} times as far as an honest one can")
    assert 1.0 < influence < 8.0
    # The check is what bounds it: a push 1% larger is refused.
    fields = to_modular(np.rint(direction * push * 1.01 * PLAN.scale).astype(np.int64) + field_offset(PLAN.bits),
                        PLAN.bits)
    assert not _passes((honest + fields) % (1 << PLAN.bits))
    mean = decode_mean_update((honest + to_modular(np.rint(direction * push * PLAN.scale).astype(np.int64)
                                                   + field_offset(PLAN.bits), PLAN.bits)) % (1 << PLAN.bits),
                              PLAN, NODES)
    assert np.isfinite(mean).all()
