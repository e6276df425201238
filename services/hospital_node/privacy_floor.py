"""The hospital's own privacy floor: what no round plan can talk it out of.

Checked on every plan that asks for an upload, against the hospital's settings, not
the aggregator's: a server that deviates from the protocol could otherwise switch secure
mode off, or drop the noise, and the nodes would obey. A refusal is a named reason with
its numbers; the node declines that round attempt and waits for the next.
"""

from __future__ import annotations

from services.common.errors import MalformedChunkError, PlanRefusedError
from services.common.noise import NoiseKind
from services.common.public_key import PublicKeyInfo
from services.common.round_plan import RoundPlan
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.update_stream import require_signed_layout


def check_plan(plan: RoundPlan, settings: HospitalNodeSettings, public: PublicKeyInfo | None,
               attempts_joined: int) -> None:
    """Return if this hospital may take part in `plan`; raise `PlanRefusedError` naming why not."""
    round_name = f"round {plan.round_id} attempt {plan.attempt}"
    if attempts_joined >= settings.max_attempts:
        raise PlanRefusedError("too_many_attempts", f"{round_name}: this hospital joins at most "
                               f"{settings.max_attempts} attempts of a round, with fresh noise each")
    if not plan.secure:
        if settings.allow_plaintext:
            return
        raise PlanRefusedError("plaintext_refused", f"{round_name} asks for a plaintext upload; this hospital's "
                               "allow_plaintext is off")
    q = plan.quantization
    if q.noise_kind is NoiseKind.NONE or q.noise_variance < settings.min_noise_variance:
        raise PlanRefusedError("noise_below_floor", f"{round_name} asks for {q.noise_kind} noise of variance "
                               f"{q.noise_variance:g}; this hospital's floor is {settings.min_noise_variance:g}")
    if q.clip_norm > settings.max_clip_norm:
        raise PlanRefusedError("clip_above_ceiling", f"{round_name} clips at {q.clip_norm:g}; this hospital allows "
                               f"at most {settings.max_clip_norm:g}")
    if len(plan.participants) < settings.min_participants:
        raise PlanRefusedError("participant_set_below_floor", f"{round_name} masks for {len(plan.participants)} "
                               f"participants; this hospital's floor is {settings.min_participants}")
    if public is None or plan.key_id != public.key_id:
        raise PlanRefusedError("unknown_key", f"{round_name} names key {plan.key_id!r}; the key authority serves "
                               f"{public.key_id if public else None!r}")
    try:
        require_signed_layout(plan, public)
    except MalformedChunkError as error:
        raise PlanRefusedError("layout_mismatch", f"{round_name}: {error}") from error
