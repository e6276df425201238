"""A hospital's own privacy floor: every downgrade a deviating aggregator could put in a plan is refused by name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.errors import PlanRefusedError
from services.common.noise import NoiseKind
from services.common.public_key import PublicKeyInfo
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.privacy_floor import check_plan
from tests.plans import PLAN, STATISTICS_LAYOUT, UPDATE_LAYOUT

SETTINGS = HospitalNodeSettings(insecure=True, min_noise_variance=8.0, max_clip_norm=50.0, min_participants=3,
                                max_attempts=2)
PUBLIC = PublicKeyInfo(b"", PLAN.key_id, UPDATE_LAYOUT, STATISTICS_LAYOUT, 4096, 3)


def test_a_plan_above_the_floor_passes() -> None:
    check_plan(PLAN, SETTINGS, PUBLIC, attempts_joined=1)


@pytest.mark.parametrize(("downgrade", "reason"), [
    (replace(PLAN, secure=False), "plaintext_refused"),
    (replace(PLAN, quantization=replace(PLAN.quantization, noise_kind=NoiseKind.NONE)), "noise_below_floor"),
    (replace(PLAN, quantization=replace(PLAN.quantization, noise_variance=1.0)), "noise_below_floor"),
    (replace(PLAN, quantization=replace(PLAN.quantization, clip_norm=1e6)), "clip_above_ceiling"),
    (replace(PLAN, participants=("hospital-1", "hospital-2")), "participant_set_below_floor"),
    (replace(PLAN, key_id="f" * 16), "unknown_key"),
    (replace(PLAN, layout=replace(UPDATE_LAYOUT, max_participants=4)), "layout_mismatch"),
])
def test_a_downgraded_plan_is_refused_by_name(downgrade: object, reason: str) -> None:
    with pytest.raises(PlanRefusedError) as refused:
        check_plan(downgrade, SETTINGS, PUBLIC, attempts_joined=0)  # type: ignore[arg-type]
    assert refused.value.reason == reason
    assert f"round {PLAN.round_id} attempt {PLAN.attempt}" in str(refused.value)


def test_a_third_attempt_of_one_round_is_refused() -> None:
    with pytest.raises(PlanRefusedError) as refused:
        check_plan(PLAN, SETTINGS, PUBLIC, attempts_joined=2)
    assert refused.value.reason == "too_many_attempts"


def test_plaintext_only_where_the_hospital_allows_it() -> None:
    check_plan(replace(PLAN, secure=False), SETTINGS.model_copy(update={"allow_plaintext": True}), None, 0)
