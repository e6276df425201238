"""The hospital's own privacy floor: what no round plan can talk it out of.

Checked on every plan that asks for an upload, against the hospital's settings, not
the aggregator's: a server that deviates from the protocol could otherwise switch secure
mode off, drop the noise, shrink each node's noise share, scale the signal past it, mask
for a set of one, or ask twice under one mask. A refusal is a named reason with its
numbers; the node declines that round attempt and waits for the next.
"""

from __future__ import annotations

import math
from collections.abc import Collection

from services.common.errors import MalformedChunkError, PlanRefusedError
from services.common.protocol.chunking import upload_chunk_count
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundKind, RoundPlan
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import plan_quantization, plan_statistics
from services.hospital_node.config import FloorSettings
from services.hospital_node.update_stream import require_signed_layout

# The largest FedProx weight a plan may ask for: far above any useful one (0.001 to 1).
MAX_PROXIMAL_MU = 100.0


def check_plan(plan: RoundPlan, settings: FloorSettings, public: PublicKeyInfo | None, *,
               last_attempt: int, attempts_joined: int, known_peers: Collection[str] = (),
               expected_values: int | None = None) -> None:
    """Return if this hospital may take part in `plan`; raise `PlanRefusedError` naming why not.

    `last_attempt`: the latest attempt of this round the node uploaded in (0: none); `known_peers`: the members
    whose mask keys the node holds; `expected_values`: the upload length this node's model makes for the plan."""
    name = f"round {plan.round_id} attempt {plan.attempt}"
    if plan.attempt <= last_attempt:
        raise PlanRefusedError("attempt_reused", f"{name}: this hospital already uploaded in attempt {last_attempt} "
                               "of this round; one upload per attempt, attempts only grow")
    if attempts_joined >= settings.max_attempts:
        raise PlanRefusedError("too_many_attempts", f"{name}: this hospital joins at most {settings.max_attempts} "
                               "attempts of a round, with fresh noise each")
    if expected_values is not None and plan.upload_value_count != expected_values:
        raise PlanRefusedError("malformed_plan", f"{name} asks for {plan.upload_value_count} values; this "
                               f"hospital's model gives {expected_values}")
    check_training(plan, settings, name)
    if not plan.secure:
        if settings.allow_plaintext:
            return
        raise PlanRefusedError("plaintext_refused", f"{name} asks for a plaintext upload; this hospital's "
                               "allow_plaintext is off")
    _check_participants(plan, settings, public, known_peers=known_peers, name=name)
    _check_noise(plan, settings, name)
    assert public is not None
    try:
        require_signed_layout(plan, public)
    except MalformedChunkError as error:
        raise PlanRefusedError("layout_mismatch", f"{name}: {error}") from error
    _check_codec(plan, public, name)


def check_training(plan: RoundPlan, settings: FloorSettings, name: str | None = None) -> None:
    """The training parameters this hospital accepts: a learning rate, epochs and a batch within its own bounds. A
    rate of 1e30 would otherwise run, upload nothing useful and leave the node's local state non-finite."""
    name = name or f"round {plan.round_id} attempt {plan.attempt}"
    training = plan.training
    if not (math.isfinite(training.learning_rate) and 0 < training.learning_rate <= settings.max_learning_rate):
        raise PlanRefusedError("learning_rate_out_of_bounds", f"{name} asks for learning rate "
                               f"{training.learning_rate!r}; this hospital trains between 0 and "
                               f"{settings.max_learning_rate:g}")
    if not 1 <= training.epochs <= settings.max_local_epochs:
        raise PlanRefusedError("local_epochs_out_of_bounds", f"{name} asks for {training.epochs} local epochs; this "
                               f"hospital trains 1 to {settings.max_local_epochs}")
    if not 1 <= training.batch_size <= settings.max_batch_size:
        raise PlanRefusedError("batch_size_out_of_bounds", f"{name} asks for batches of {training.batch_size}; this "
                               f"hospital takes 1 to {settings.max_batch_size}")
    if not (math.isfinite(training.proximal_mu) and 0 <= training.proximal_mu <= MAX_PROXIMAL_MU):
        raise PlanRefusedError("proximal_mu_out_of_bounds", f"{name} asks for a proximal weight of "
                               f"{training.proximal_mu!r}; this hospital takes 0 to {MAX_PROXIMAL_MU:g}")


def check_evaluation(plan: RoundPlan, settings: FloorSettings, known_peers: Collection[str] = ()) -> None:
    """An evaluation plan this hospital answers: a secure one (its counts go masked; plaintext only where the
    hospital allows plaintext rounds), whose participant set names it, holds at least its minimum of members (an
    empty or tiny set would make the aggregator's pooled figures this hospital's own) and only members whose mask
    keys it holds."""
    members = plan.participants
    name = f"evaluation of round {plan.round_id - 1}'s model"
    if not plan.secure and not settings.allow_plaintext:
        raise PlanRefusedError("plaintext_refused", f"{name} is asked in plaintext; this hospital's allow_plaintext "
                               "is off, and its counts go only masked")
    if settings.node_id not in members:
        raise PlanRefusedError("not_a_participant", f"{name} is asked of {sorted(members)}, without this hospital")
    if len(set(members)) != len(members) or len(members) < settings.min_participants:
        raise PlanRefusedError("participant_set_below_floor", f"{name} is asked of {len(set(members))} hospitals; "
                               f"this hospital reports only among at least {settings.min_participants}")
    unknown = sorted(set(members) - set(known_peers) - {settings.node_id})
    if plan.secure and unknown:
        raise PlanRefusedError("unknown_participant", f"{name} is asked of {unknown}, whose mask keys this hospital "
                               "does not hold")


def _check_participants(plan: RoundPlan, settings: FloorSettings, public: PublicKeyInfo | None,
                        *, known_peers: Collection[str], name: str) -> None:
    members = plan.participants
    if len(set(members)) != len(members):
        raise PlanRefusedError("duplicate_participant", f"{name} names a participant twice: {list(members)}")
    if public is None or plan.key_id != public.key_id:
        raise PlanRefusedError("unknown_key", f"{name} names key {plan.key_id!r}; the key authority serves "
                               f"{public.key_id if public else None!r}")
    unknown = sorted(set(members) - set(known_peers) - {settings.node_id})
    if unknown:
        raise PlanRefusedError("unknown_participant", f"{name} names {unknown}, whose mask keys this hospital "
                               "does not hold")
    if not settings.min_participants <= len(members) <= public.max_participants:
        raise PlanRefusedError("participant_set_below_floor", f"{name} masks for {len(members)} participants; this "
                               f"hospital needs between {settings.min_participants} and n_max = "
                               f"{public.max_participants}")


def _check_noise(plan: RoundPlan, settings: FloorSettings, name: str) -> None:
    q = plan.quantization
    numbers = (q.clip_norm, q.scale, q.noise_variance, q.rounding_beta)
    if not all(math.isfinite(v) and v > 0 for v in numbers):
        raise PlanRefusedError("malformed_plan", f"{name} has a clip norm, scale, noise or rounding parameter that "
                               f"is not a positive number: {numbers}")
    if q.noise_kind is not NoiseKind.SKELLAM:
        raise PlanRefusedError("noise_below_floor", f"{name} asks for {q.noise_kind} noise; this hospital adds "
                               "Skellam noise only, the one with a privacy bound")
    if not 1 <= q.min_participants <= len(plan.participants):
        raise PlanRefusedError("noise_below_floor", f"{name} splits the noise over a quorum of {q.min_participants}"
                               f" in a set of {len(plan.participants)}")
    floor = settings.min_noise_variance / settings.min_participants
    if q.noise_variance < settings.min_noise_variance or q.node_noise_variance < floor:
        raise PlanRefusedError("noise_below_floor", f"{name} asks for noise variance {q.noise_variance:g} per "
                               f"quorum, {q.node_noise_variance:g} per node; this hospital's floor is "
                               f"{settings.min_noise_variance:g} and {floor:g}")
    if q.clip_norm > settings.max_clip_norm:
        raise PlanRefusedError("clip_above_ceiling", f"{name} clips at {q.clip_norm:g}; this hospital allows "
                               f"at most {settings.max_clip_norm:g}")


def _check_codec(plan: RoundPlan, public: PublicKeyInfo, name: str) -> None:
    """The scale, coordinate bound, rounding and pieces must be the ones the codec derives from the plan's own
    clip norm, field and noise: a larger scale would shrink the noise against the signal."""
    q, layout = plan.quantization, plan.layout
    pieces = upload_chunk_count(q.dimension, layout, public.slots, plan.transfer.chunk_ciphertexts)
    derive = plan_statistics if plan.kind is RoundKind.HEAD_STATISTICS else plan_quantization
    try:
        expected = derive(q.dimension, q.clip_norm, layout.bits, max_participants=layout.max_participants,
                          min_participants=q.min_participants, noise_kind=q.noise_kind,
                          noise_variance=q.noise_variance, rounding_pieces=pieces)
    except ValueError as error:
        raise PlanRefusedError("malformed_plan", f"{name}: {error}") from error
    if (q.scale, q.coordinate_bound, q.rounding_beta, q.rounding_pieces) != (
            expected.scale, expected.coordinate_bound, expected.rounding_beta, expected.rounding_pieces):
        raise PlanRefusedError("codec_mismatch", f"{name} encodes at scale {q.scale:g}, bound {q.coordinate_bound}, "
                               f"beta {q.rounding_beta:g}, {q.rounding_pieces} pieces; its own clip norm, field and "
                               f"noise give {expected.scale:g}, {expected.coordinate_bound}, "
                               f"{expected.rounding_beta:g}, {expected.rounding_pieces}")
