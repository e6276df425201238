"""Turn a local model update into the numbered, digested, signed chunks of one upload."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from services.common.errors import MalformedChunkError
from services.common.protocol.chunking import float32_chunks
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundPlan
from services.common.protocol.stream_digest import StreamDigest, sign_attestation
from services.common.protocol.upload import (
    Attestation,
    PhaseSeconds,
    RecordPrivacySpent,
    UploadChunk,
    disclosures_digest,
)
from services.common.protocol.wire import plan_digest
from services.common.runtime.tracing import record_span
from services.common.secure_sum.pairwise_masks import (
    MaskScope,
    PeerMask,
    authority_mask,
    participant_set_hash,
    peer_masks,
)
from services.common.secure_sum.update_codec import update_clip_factor
from services.hospital_node.encryption_pool import EncryptionPool, UploadRecipe

# Called with the number of chunks handed to gRPC so far (a test's window: tests/service_hooks; None otherwise).
ChunkSent = Callable[[int], None]


@dataclass
class UploadTimings:
    train: float = 0.0
    encode: float = 0.0
    encrypt: float = 0.0
    precompute: float = 0.0
    started: float = field(default_factory=time.monotonic)  # the end of training

    def phases(self) -> PhaseSeconds:
        total = time.monotonic() - self.started
        return PhaseSeconds(train=self.train, encode=self.encode, encrypt=self.encrypt,
                            upload=max(0.0, total - self.encode - self.encrypt), precompute=self.precompute)


def require_signed_layout(plan: RoundPlan, public: PublicKeyInfo) -> None:
    """Refuse a plan that would pack in another layout than the key authority's one for this round's kind: the
    attestation signs the kind, and the key authority unpacks by it."""
    expected = public.layout_for(plan.sum_layout)
    if plan.layout != expected:
        raise MalformedChunkError(
            f"round {plan.round_id} packs {plan.layout.fields_per_slot} x {plan.layout.bits}-bit fields for "
            f"{plan.layout.max_participants} nodes; the key authority's {plan.sum_layout.name.lower()} layout is "
            f"{expected.fields_per_slot} x {expected.bits}-bit for {expected.max_participants}")


@dataclass(frozen=True)
class Disclosures:
    """What an upload's last chunk states beside its payload; the attestation signs it."""

    record_privacy: RecordPrivacySpent | None = None
    masked_class_counts: tuple[int, ...] = ()


def _signed_chunks(plan: RoundPlan, node_id: str, key: Ed25519PrivateKey, *, timings: UploadTimings,
                   bodies: Iterator[UploadChunk], chunk_sent: ChunkSent | None, disclosures: Disclosures,
                   plan_sha256: bytes | None) -> Iterator[UploadChunk]:
    digest = StreamDigest(plan.round_id, plan.key_id, node_id, plan.attempt)
    sent = 0
    previous: UploadChunk | None = None
    for body in bodies:
        body = replace(body, round_id=plan.round_id, key_id=plan.key_id, node_id=node_id, attempt=plan.attempt)
        digest.add_chunk(body.index, body.payloads)
        if previous is not None:
            yield previous
            sent += 1
            if chunk_sent is not None:
                chunk_sent(sent)
        previous = body
    assert previous is not None, "an upload has at least one chunk"
    unsigned = Attestation(node_id, plan.round_id, plan.key_id, plan.transfer.chunk_count, digest.digest(), b"",
                           plan.sum_layout, plan.attempt, participant_set_hash(plan.participants),
                           plan.upload_value_count, plan.transfer.chunk_ciphertexts,
                           plan_sha256 if plan_sha256 is not None else plan_digest(plan),
                           disclosures_digest(disclosures.record_privacy, disclosures.masked_class_counts),
                           plan.model.sha256)
    attestation = replace(unsigned, signature=sign_attestation(key, unsigned.signed_message()))
    phases = timings.phases()
    _trace_upload(plan, timings, phases)
    yield replace(previous, attestation=attestation, phases=phases,
                  record_privacy=disclosures.record_privacy, masked_class_counts=disclosures.masked_class_counts)


def _trace_upload(plan: RoundPlan, timings: UploadTimings, phases: PhaseSeconds) -> None:
    """The node's spans of one upload: training, then the stretch from its update to its last chunk, with the
    seconds spent encoding and encrypting in it (they interleave with the sending)."""
    now_ns, now = time.time_ns(), time.monotonic()
    trained_ns = now_ns - int((now - timings.started) * 1e9)
    record_span("node.train", trained_ns - int(timings.train * 1e9), trained_ns, round=plan.round_id)
    record_span("node.upload", trained_ns, now_ns, round=plan.round_id, attempt=plan.attempt,
                encode_seconds=phases.encode, encrypt_seconds=phases.encrypt, precompute_seconds=phases.precompute)


def attempt_scope(consortium: str, plan: RoundPlan) -> MaskScope:
    """What one round attempt's masks are bound to; made once per upload, for the update's masks and the counts'."""
    return MaskScope(consortium, plan.key_id, plan.round_id, plan.attempt, plan.participants, plan_digest(plan))


def masked_recipe(plan: RoundPlan, node_id: str, agreement: X25519PrivateKey, *,
                  peers: Mapping[str, X25519PublicKey], public: PublicKeyInfo, scope: MaskScope,
                  seed: np.random.SeedSequence | None = None, tag: str | None = None) -> UploadRecipe:
    """A secure upload's recipe: this node's pairwise masks for the scope's participant set and its mask with the key
    authority, and fresh OS entropy unless `seed` is given (tests only), so that no noised vector is ever sent under
    two participant sets. The one recipe the node, the tests and the benchmarks use."""
    authority = X25519PublicKey.from_public_bytes(public.mask_agreement_key)
    masks = tuple(peer_masks(node_id, agreement, peers, scope=scope))
    return upload_recipe(plan, public.slots, seed if seed is not None else np.random.SeedSequence(), masks=masks,
                         authority=(authority_mask(node_id, agreement, authority, scope),), tag=tag)


def upload_recipe(plan: RoundPlan, slots: int, seed: np.random.SeedSequence, *, masks: tuple[PeerMask, ...] = (),
                  authority: tuple[PeerMask, ...] = (), tag: str | None = None) -> UploadRecipe:
    """Everything of a secure upload for `plan` but the update: what a precompute draws ahead from (`tag`)."""
    return UploadRecipe(plan.quantization, plan.layout, slots, plan.transfer.chunk_ciphertexts, seed, masks,
                        authority, tag)


def secure_upload(plan: RoundPlan, update: np.ndarray, node_id: str, *, key: Ed25519PrivateKey,
                  pool: EncryptionPool, recipe: UploadRecipe, timings: UploadTimings,
                  record: list[np.ndarray] | None = None, chunk_sent: ChunkSent | None = None,
                  disclosures: Disclosures = Disclosures(), plan_sha256: bytes | None = None) -> Iterator[UploadChunk]:
    """Chunks of ciphertexts: clip, scale and round, add noise, add this node's pairwise masks for the plan's
    participant set, pack and encrypt (from what was precomputed for the recipe's tag, when given), streamed in
    order. `plan_sha256` is `plan_digest(plan)` when the caller has it already."""
    start = time.monotonic()
    factor = update_clip_factor(update, plan.quantization)  # the global norm: the one step over the whole update
    timings.encode = time.monotonic() - start
    def bodies() -> Iterator[UploadChunk]:
        chunks = pool.encode_and_encrypt(update, recipe, keep_fields=record is not None, factor=factor)
        while True:
            waited = time.monotonic()
            chunk = next(chunks, None)
            timings.encrypt += time.monotonic() - waited
            if chunk is None:
                return
            if record is not None and chunk.fields is not None:
                record.append(chunk.fields)
            yield UploadChunk(plan.round_id, plan.key_id, node_id, chunk.index, tuple(chunk.ciphertexts),
                              attempt=plan.attempt)

    return _signed_chunks(plan, node_id, key, timings=timings, bodies=bodies(), chunk_sent=chunk_sent,
                          disclosures=disclosures, plan_sha256=plan_sha256)


def plaintext_upload(plan: RoundPlan, update: np.ndarray, node_id: str, *, key: Ed25519PrivateKey,
                     timings: UploadTimings, chunk_sent: ChunkSent | None = None,
                     disclosures: Disclosures = Disclosures(), plan_sha256: bytes | None = None
                     ) -> Iterator[UploadChunk]:
    """Privacy off: the raw float32 update in chunks (for comparison runs only)."""
    bodies = (UploadChunk(plan.round_id, plan.key_id, node_id, i, plaintext_values=values)
              for i, values in enumerate(float32_chunks(update, plan.transfer.plaintext_chunk_values)))
    return _signed_chunks(plan, node_id, key, timings=timings, bodies=bodies, chunk_sent=chunk_sent,
                          disclosures=disclosures, plan_sha256=plan_sha256)


def assemble_upload(plan: RoundPlan, update: np.ndarray, node_id: str, *, key: Ed25519PrivateKey,
                    disclosures: Disclosures, timings: UploadTimings, pool: EncryptionPool | None = None,
                    recipe: UploadRecipe | None = None, record: list[np.ndarray] | None = None,
                    chunk_sent: ChunkSent | None = None, plan_sha256: bytes | None = None) -> Iterator[UploadChunk]:
    """The one place a node's upload is assembled and signed: encrypted under the plan's masks and noise (secure,
    with `pool` and `recipe`) or in plaintext, and its last chunk's attestation signing every field the node sends,
    the disclosures included."""
    if plan.secure:
        if pool is None or recipe is None:
            raise ValueError(f"round {plan.round_id} is secure: its upload needs the encryption pool and a recipe")
        return secure_upload(plan, update, node_id, key=key, pool=pool, recipe=recipe, timings=timings, record=record,
                             chunk_sent=chunk_sent, disclosures=disclosures, plan_sha256=plan_sha256)
    return plaintext_upload(plan, update, node_id, key=key, timings=timings, chunk_sent=chunk_sent,
                            disclosures=disclosures, plan_sha256=plan_sha256)
