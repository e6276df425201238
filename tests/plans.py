"""A consistent round plan for tests that need one, changed with `dataclasses.replace`."""

from __future__ import annotations

from dataclasses import replace

from services.common.noise import NoiseKind
from services.common.packing import FieldLayout
from services.common.round_plan import LocalTrainingPlan, ModelBroadcast, RoundKind, RoundPlan, TransferPlan
from services.common.update_codec import QuantizationPlan

UPDATE_LAYOUT, STATISTICS_LAYOUT = FieldLayout(10, 8, 3), FieldLayout(37, 8, 1)
PLAN = RoundPlan(
    7, RoundKind.TRAIN, True, "0123456789abcdef", LocalTrainingPlan(2, 0.0125, 16, "adamw", 0.01, True),
    QuantizationPlan(1000, 10.0, 123.5, 50, 10, 3, NoiseKind.SKELLAM, 16.0, rounding_pieces=2, rounding_beta=0.6),
    UPDATE_LAYOUT, TransferPlan(2, 8, 1 << 18, 900.0), ModelBroadcast(500, "digest", b"\x01" * 32, 1), 2,
    ("hospital-1", "hospital-2", "hospital-3"))


def packed_in(layout: FieldLayout, plan: RoundPlan = PLAN, **changes: object) -> RoundPlan:
    """`plan` packing in `layout` (its quantization's bits follow), with `changes`."""
    return replace(plan, layout=layout, quantization=replace(plan.quantization, bits=layout.bits), **changes)
