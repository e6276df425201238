"""Turn a local model update into the numbered, digested, signed chunks of one upload."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.chunking import float32_chunks
from services.common.encryption_pool import EncryptionPool
from services.common.errors import MalformedChunkError
from services.common.noise import NoiseKind
from services.common.packing import FieldLayout
from services.common.stream_digest import StreamDigest, attestation_message, sign_attestation
from services.common.update_codec import QuantizationPlan, scale_update


@dataclass
class UploadTimings:
    train: float = 0.0
    encode: float = 0.0
    encrypt: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def phases(self) -> pb.NodePhaseSeconds:
        total = time.monotonic() - self.started
        return pb.NodePhaseSeconds(train=self.train, encode=self.encode, encrypt=self.encrypt,
                                   upload=max(0.0, total - self.encode - self.encrypt))


@dataclass(frozen=True)
class CrashFault:
    """Test hook: the process dies after sending this many chunks.

    It waits `flush_seconds` first: gRPC has accepted the chunks but may not have put them on the wire yet,
    and without the wait the aggregator might receive none, so the test would not show a death mid-upload.
    """

    after_chunks: int
    flush_seconds: float = 1.0

    def crash(self) -> NoReturn:
        time.sleep(self.flush_seconds)
        os._exit(17)


def quantization_plan(plan: pb.RoundPlan) -> QuantizationPlan:
    return QuantizationPlan(
        dimension=plan.upload_value_count, clip_norm=plan.clip_norm, scale=plan.scale,
        coordinate_bound=plan.coordinate_bound, bits=plan.bits, min_participants=plan.min_participants,
        noise_kind=NoiseKind(plan.noise_kind), noise_variance=plan.noise_variance,
        rounding_pieces=plan.chunk_count, rounding_beta=plan.rounding_beta,
    )


def require_signed_layout(plan: pb.RoundPlan, public: pb.PublicContext) -> None:
    """Refuse a plan that would pack in another layout than the key authority's one for this round's kind: the
    attestation signs the kind, and the key authority unpacks by it."""
    statistics = plan.head_statistics
    bits, fields = (public.statistics_bits, 1) if statistics else (public.bits, public.fields_per_slot)
    if (plan.bits, plan.fields_per_slot, plan.max_participants) != (bits, fields, public.max_participants):
        raise MalformedChunkError(
            f"round {plan.round_id} packs {plan.fields_per_slot} x {plan.bits}-bit fields for {plan.max_participants} "
            f"nodes; the key authority's {'statistics' if statistics else 'update'} layout is {fields} x {bits}-bit "
            f"for {public.max_participants}")


def _signed_chunks(plan: pb.RoundPlan, node_id: str, key: Ed25519PrivateKey, timings: UploadTimings,
                   bodies: Iterator[pb.UpdateChunk], fault: CrashFault | None) -> Iterator[pb.UpdateChunk]:
    digest = StreamDigest(plan.round_id, plan.key_id, node_id)
    sent = 0
    previous: pb.UpdateChunk | None = None
    for body in bodies:
        body.round_id, body.key_id, body.node_id = plan.round_id, plan.key_id, node_id
        digest.add_chunk(body.index, list(body.ciphertexts) if plan.secure else [body.plaintext_values])
        if previous is not None:
            yield previous
            sent += 1
            if fault is not None and sent >= fault.after_chunks:
                fault.crash()
        previous = body
    assert previous is not None, "an upload has at least one chunk"
    stream_digest = digest.digest()
    layout = pb.SUM_LAYOUT_STATISTICS if plan.head_statistics else pb.SUM_LAYOUT_UPDATE
    message = attestation_message(plan.round_id, plan.key_id, node_id, plan.chunk_count, stream_digest, layout)
    previous.attestation.CopyFrom(pb.Attestation(node_id=node_id, round_id=plan.round_id, key_id=plan.key_id,
                                                 chunk_count=plan.chunk_count, stream_digest=stream_digest,
                                                 signature=sign_attestation(key, message), layout=layout))
    previous.phase_seconds.CopyFrom(timings.phases())
    yield previous


def secure_upload(plan: pb.RoundPlan, update: np.ndarray, node_id: str, key: Ed25519PrivateKey,
                  pool: EncryptionPool, slots: int, timings: UploadTimings, seed: np.random.SeedSequence,
                  record: list[np.ndarray] | None = None, fault: CrashFault | None = None) -> Iterator[pb.UpdateChunk]:
    """Chunks of ciphertexts: clip, scale and round, add noise, pack and encrypt, streamed in order."""
    quantization = quantization_plan(plan)
    layout = FieldLayout(plan.bits, plan.max_participants, plan.fields_per_slot)
    start = time.monotonic()
    scaled = scale_update(update, quantization)
    timings.encode = time.monotonic() - start

    def bodies() -> Iterator[pb.UpdateChunk]:
        chunks = pool.encode_and_encrypt(scaled, quantization, layout, slots, plan.chunk_ciphertexts, seed,
                                         keep_fields=record is not None)
        while True:
            waited = time.monotonic()
            chunk = next(chunks, None)
            timings.encrypt += time.monotonic() - waited
            if chunk is None:
                return
            if record is not None and chunk.fields is not None:
                record.append(chunk.fields)
            yield pb.UpdateChunk(index=chunk.index, ciphertexts=chunk.ciphertexts)

    return _signed_chunks(plan, node_id, key, timings, bodies(), fault)


def plaintext_upload(plan: pb.RoundPlan, update: np.ndarray, node_id: str, key: Ed25519PrivateKey,
                     timings: UploadTimings, fault: CrashFault | None = None) -> Iterator[pb.UpdateChunk]:
    """Privacy off: the raw float32 update in chunks (for comparison runs only)."""
    bodies = (pb.UpdateChunk(index=i, plaintext_values=values)
              for i, values in enumerate(float32_chunks(update, plan.plaintext_chunk_values)))
    return _signed_chunks(plan, node_id, key, timings, bodies, fault)
