"""A hospital's own privacy floor: every downgrade a deviating aggregator could put in a plan is refused by name."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.common.errors import PlanRefusedError
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundKind, RoundPlan
from services.common.secure_sum.noise import NoiseKind
from services.hospital_node.config import FloorSettings, HospitalNodeSettings
from services.hospital_node.privacy_floor import check_evaluation, check_plan
from tests.plans import PLAN, STATISTICS_LAYOUT, UPDATE_LAYOUT

SETTINGS = HospitalNodeSettings(insecure=True, node_id="hospital-1", min_noise_variance=8.0, max_clip_norm=50.0,
                                min_participants=3, max_attempts=2)
PUBLIC = PublicKeyInfo(b"", PLAN.key_id, UPDATE_LAYOUT, STATISTICS_LAYOUT, 4096, 3)
PEERS = ("hospital-2", "hospital-3", "hospital-4")
Q = PLAN.quantization


def _check(plan: object, last_attempt: int = 0, joined: int = 0) -> None:
    check_plan(plan, FloorSettings.of(SETTINGS), PUBLIC, last_attempt=last_attempt, attempts_joined=joined,  # type: ignore[arg-type]
               known_peers=PEERS, expected_values=PLAN.upload_value_count)


def _refusal(plan: RoundPlan, settings: HospitalNodeSettings = SETTINGS, public: PublicKeyInfo | None = PUBLIC,
             last_attempt: int = 0, joined: int = 0, peers: tuple[str, ...] = PEERS) -> str | None:
    """The floor's named reason for refusing `plan`, or None when the hospital takes part."""
    try:
        check_plan(plan, FloorSettings.of(settings), public, last_attempt=last_attempt, attempts_joined=joined,
                   known_peers=peers, expected_values=PLAN.upload_value_count)
    except PlanRefusedError as refused:
        return refused.reason
    return None


def test_a_plan_above_the_floor_passes() -> None:
    q = PLAN.quantization
    assert q.noise_variance >= SETTINGS.min_noise_variance and q.clip_norm <= SETTINGS.max_clip_norm
    assert len(PLAN.participants) >= SETTINGS.min_participants
    # A later attempt of a round whose first attempt this hospital joined is taken too, once.
    assert _refusal(PLAN, last_attempt=0, joined=0) is None
    assert _refusal(replace(PLAN, attempt=2), last_attempt=1, joined=1) is None


@pytest.mark.parametrize(("downgrade", "reason"), [
    (replace(PLAN, secure=False), "plaintext_refused"),
    (replace(PLAN, quantization=replace(Q, noise_kind=NoiseKind.NONE)), "noise_below_floor"),
    (replace(PLAN, quantization=replace(Q, noise_kind=NoiseKind.POISSON)), "noise_below_floor"),
    (replace(PLAN, quantization=replace(Q, noise_variance=1.0)), "noise_below_floor"),
    # The share each node adds is noise_variance / min_participants: a huge quorum would make it vanish.
    (replace(PLAN, quantization=replace(Q, min_participants=1_000_000)), "noise_below_floor"),
    (replace(PLAN, quantization=replace(Q, clip_norm=1e6)), "clip_above_ceiling"),
    (replace(PLAN, quantization=replace(Q, clip_norm=float("nan"))), "malformed_plan"),
    # A larger scale would shrink the noise against the signal.
    (replace(PLAN, quantization=replace(Q, scale=Q.scale * 100)), "codec_mismatch"),
    (replace(PLAN, participants=("hospital-1", "hospital-2")), "participant_set_below_floor"),
    (replace(PLAN, participants=("hospital-1", "hospital-2", "hospital-2")), "duplicate_participant"),
    (replace(PLAN, participants=("hospital-1", "hospital-1", "hospital-1")), "duplicate_participant"),
    (replace(PLAN, participants=tuple(f"hospital-{i}" for i in range(1, 10))), "unknown_participant"),
    (replace(PLAN, key_id="f" * 16), "unknown_key"),
    (replace(PLAN, layout=replace(UPDATE_LAYOUT, max_participants=4)), "layout_mismatch"),
])
def test_a_downgraded_plan_is_refused_by_name(downgrade: object, reason: str) -> None:
    with pytest.raises(PlanRefusedError) as refused:
        _check(downgrade)
    assert refused.value.reason == reason
    assert f"round {PLAN.round_id} attempt {PLAN.attempt}" in str(refused.value)


def test_a_set_above_n_max_is_refused_even_of_known_members() -> None:
    members = tuple(f"hospital-{i}" for i in range(1, 10))
    with pytest.raises(PlanRefusedError) as refused:
        check_plan(replace(PLAN, participants=members), FloorSettings.of(SETTINGS), PUBLIC, last_attempt=0,
                   attempts_joined=0, known_peers=members, expected_values=PLAN.upload_value_count)
    assert refused.value.reason == "participant_set_below_floor" and "n_max = 8" in str(refused.value)


def test_an_attempt_is_used_once_attempts_only_grow_and_a_third_is_refused() -> None:
    for last, joined, reason in ((2, 1, "attempt_reused"), (3, 1, "attempt_reused"), (1, 2, "too_many_attempts")):
        with pytest.raises(PlanRefusedError) as refused:
            _check(PLAN, last_attempt=last, joined=joined)
        assert refused.value.reason == reason


def test_an_upload_length_other_than_the_models_is_refused() -> None:
    with pytest.raises(PlanRefusedError) as refused:
        check_plan(PLAN, FloorSettings.of(SETTINGS), PUBLIC, last_attempt=0, attempts_joined=0, known_peers=PEERS,
                   expected_values=PLAN.upload_value_count + 1)
    assert refused.value.reason == "malformed_plan"


def test_plaintext_only_where_the_hospital_allows_it() -> None:
    plaintext = replace(PLAN, secure=False)
    assert _refusal(plaintext, SETTINGS.model_copy(update={"allow_plaintext": True}), None, peers=()) is None
    assert _refusal(plaintext, SETTINGS, None, peers=()) == "plaintext_refused"


@pytest.mark.parametrize(("training", "reason"), [
    ({"learning_rate": 1e30}, "learning_rate_out_of_bounds"),
    ({"learning_rate": float("nan")}, "learning_rate_out_of_bounds"),
    ({"learning_rate": 0.0}, "learning_rate_out_of_bounds"),
    ({"epochs": 0}, "local_epochs_out_of_bounds"),
    ({"epochs": 10_000}, "local_epochs_out_of_bounds"),
    ({"batch_size": 1 << 20}, "batch_size_out_of_bounds"),
    ({"proximal_mu": float("inf")}, "proximal_mu_out_of_bounds"),
])
def test_training_parameters_outside_the_hospitals_bounds_are_declined_by_name(training: dict[str, object],
                                                                               reason: str) -> None:
    assert _refusal(replace(PLAN, training=replace(PLAN.training, **training))) == reason


@pytest.mark.parametrize(("participants", "reason"), [
    ((), "not_a_participant"),
    (("hospital-2", "hospital-3", "hospital-4"), "not_a_participant"),
    (("hospital-1", "hospital-2"), "participant_set_below_floor"),
    (("hospital-1", "hospital-1", "hospital-2"), "participant_set_below_floor"),
])
def test_an_evaluation_is_answered_only_among_enough_members_that_include_the_hospital(
        participants: tuple[str, ...], reason: str) -> None:
    plan = replace(PLAN, kind=RoundKind.EVALUATE, participants=participants)
    with pytest.raises(PlanRefusedError) as refused:
        check_evaluation(plan, FloorSettings.of(SETTINGS), PEERS)
    assert refused.value.reason == reason
    honest = replace(plan, participants=("hospital-1", "hospital-2", "hospital-3"))
    assert check_evaluation(honest, FloorSettings.of(SETTINGS), PEERS) is None


def test_an_evaluation_in_plaintext_or_among_strangers_gets_no_report() -> None:
    """A server that downgrades an evaluation to plaintext would read each hospital's counts; one that names members
    whose mask keys the hospital lacks asks for masks it cannot make."""
    plan = replace(PLAN, kind=RoundKind.EVALUATE, participants=("hospital-1", "hospital-2", "hospital-3"))
    for changed, peers, reason in ((replace(plan, secure=False), PEERS, "plaintext_refused"),
                                   (plan, ("hospital-2",), "unknown_participant")):
        with pytest.raises(PlanRefusedError) as refused:
            check_evaluation(changed, FloorSettings.of(SETTINGS), peers)
        assert refused.value.reason == reason
    plaintext_ok = FloorSettings.of(SETTINGS.model_copy(update={"allow_plaintext": True}))
    assert check_evaluation(replace(plan, secure=False), plaintext_ok,
                            PEERS) is None
