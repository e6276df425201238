"""A consistent round plan for tests that need one, changed with `dataclasses.replace`."""

from __future__ import annotations

from dataclasses import replace

from services.common.protocol.round_plan import LocalTrainingPlan, ModelBroadcast, RoundKind, RoundPlan, TransferPlan
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import FieldLayout
from services.common.secure_sum.update_codec import plan_quantization

UPDATE_LAYOUT, STATISTICS_LAYOUT = FieldLayout(10, 8, 3), FieldLayout(37, 8, 1)
# A codec the node's privacy floor accepts: the one plan_quantization derives for 1,000 values, clip norm 10,
# 10-bit fields for n_max 8, a quorum of 3 and Skellam noise 16, in one chunk.
PLAN = RoundPlan(
    7, RoundKind.TRAIN, True, "0123456789abcdef", LocalTrainingPlan(2, 0.0125, 16, "adamw", 0.01, True),
    plan_quantization(1000, 10.0, 10, max_participants=8, min_participants=3, noise_kind=NoiseKind.SKELLAM,
                      noise_variance=16.0, rounding_pieces=1),
    UPDATE_LAYOUT, TransferPlan(1, 8, 1 << 18, 900.0), ModelBroadcast(500, "digest", b"\x01" * 32, 1), 2,
    ("hospital-1", "hospital-2", "hospital-3"))


def packed_in(layout: FieldLayout, plan: RoundPlan = PLAN, **changes: object) -> RoundPlan:
    """`plan` packing in `layout` (its quantization's bits follow), with `changes`."""
    return replace(plan, layout=layout, quantization=replace(plan.quantization, bits=layout.bits), **changes)
