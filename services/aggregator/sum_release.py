"""A sealed attempt's sum, released: decrypted by the key authority (secure mode) and decoded to the mean upload,
refused if it is larger than the participants' clipped uploads and the configured noise can make it."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from services.aggregator.key_authority_client import KeyAuthorityClient
from services.aggregator.round_state import RoundState
from services.common.errors import ImplausibleSumError
from services.common.protocol.round_plan import RoundPlan
from services.common.protocol.upload import DecryptManifest
from services.common.protocol.wire import plan_digest
from services.common.runtime.tracing import span
from services.common.secure_sum.quantize import l2_norm
from services.common.secure_sum.update_codec import centred_sum, mean_from_centred, sum_norm_bound

# Called with each decrypted sum's plan, field integers and contributors (a test's window; None in production).
DecryptionObserver = Callable[[RoundPlan, np.ndarray, list[str]], None]


def release_mean(state: RoundState, key_authority: KeyAuthorityClient,
                 observer: DecryptionObserver | None = None, *, retry_seconds: float = 0.0,
                 stop: threading.Event | None = None) -> np.ndarray:
    """The participants' mean upload. Raises `DecryptionRefusedError` when the key authority refuses the sum and
    `ImplausibleSumError` when a decrypted sum is out of bounds (wrong masks, or a crafted upload)."""
    plan, contributors = state.plan, [state.contributors[node] for node in sorted(state.contributors)]
    participants = len(contributors)
    if not plan.secure:
        assert state.plaintext_sum is not None
        return state.plaintext_sum / participants
    assert state.ciphertext_sum is not None
    total = state.ciphertext_sum
    manifest = DecryptManifest(state.round_id, plan.key_id, total.chunk_count, plan.upload_value_count,
                               tuple(c.attestation for c in contributors), plan.sum_layout, plan.attempt,
                               plan.participants, plan.transfer.chunk_ciphertexts, plan_digest(plan))
    field_sums = key_authority.decrypt(manifest, lambda: (total.serialized_chunk(i) for i in range(total.chunk_count)),
                                       retry_seconds, stop)
    if observer is not None:
        observer(plan, field_sums, [c.header.node_id for c in contributors])
    with span("aggregator.decode", values=int(field_sums.size)):
        return _decoded_mean(state, field_sums, participants)


def _decoded_mean(state: RoundState, field_sums: np.ndarray, participants: int) -> np.ndarray:
    plan = state.plan
    q = plan.quantization
    centred = centred_sum(field_sums, q, participants)
    norm, bound = l2_norm(centred), sum_norm_bound(q, participants)
    if norm > bound:
        raise ImplausibleSumError(f"round {state.round_id} attempt {plan.attempt}: the decrypted sum has norm "
                                  f"{norm:.4g}, above the {bound:.4g} that {participants} clipped uploads and the "
                                  "noise reach but with probability 1e-6")
    return mean_from_centred(centred, q, participants)
