"""A node's upload stream and the manifest of a sealed sum, as typed objects.

The wire format lives in `protos/`; `services/common/protocol/wire.py` converts at the edge.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from services.common.protocol.round_plan import SumLayout
from services.common.secure_sum.ckks_params import COEFF_MOD_BIT_SIZES, POLY_MODULUS_DEGREE

# A serialized fresh ciphertext at the data level: 2 polynomials of N coefficients per data prime, 8 bytes each, and
# TenSEAL's header (145 bytes measured; 1 KiB allowed). The aggregator refuses any other length.
CIPHERTEXT_BYTES_BOUND = 2 * POLY_MODULUS_DEGREE * (len(COEFF_MOD_BIT_SIZES) - 1) * 8 + 1024
# Everything in a message besides its payload: a chunk's header, attestation and phases, or a join's parameter spec.
MESSAGE_OVERHEAD_BYTES = 256 * 1024


def upload_message_limit(chunk_ciphertexts: int, plaintext_chunk_values: int) -> int:
    """The largest message an honest node sends the aggregator: one upload chunk at its largest (ciphertexts in a
    secure round, float32 values in plaintext mode), with room for its other fields. The aggregator's gRPC server
    refuses anything larger with RESOURCE_EXHAUSTED before it reaches memory."""
    payload = max(chunk_ciphertexts * (CIPHERTEXT_BYTES_BOUND + 8), 4 * plaintext_chunk_values)
    return payload + MESSAGE_OVERHEAD_BYTES


ATTESTATION_DOMAIN = b"fedxray.v1/attestation/3"
DISCLOSURES_DOMAIN = b"fedxray.v1/disclosures/1"


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


@dataclass(frozen=True)
class Attestation:
    """A node's signed statement: it streamed exactly these chunks in this round attempt, in this layout, masked
    for exactly this participant set, with this many values in chunks of this many ciphertexts."""

    node_id: str
    round_id: int
    key_id: str
    chunk_count: int
    stream_digest: bytes
    signature: bytes
    layout: SumLayout
    attempt: int = 1
    participant_set: bytes = b""  # participant_set_hash(S)
    value_count: int = 0
    chunk_ciphertexts: int = 0
    plan_digest: bytes = b""  # plan_digest() of the plan the node followed
    disclosures: bytes = b""  # disclosures_digest() of what the last chunk says beside the payload
    model_digest: bytes = b""  # SHA-256 of the global model the node trained on (the plan's model.sha256)

    def signed_message(self) -> bytes:
        """What the node signs: every field but the signature."""
        return ATTESTATION_DOMAIN + _frame(
            struct.pack(">Q", self.round_id), struct.pack(">I", self.attempt), self.key_id.encode(),
            self.node_id.encode(), self.participant_set, struct.pack(">I", self.chunk_count),
            struct.pack(">Q", self.value_count), struct.pack(">I", self.chunk_ciphertexts), self.stream_digest,
            struct.pack(">I", int(self.layout)), self.plan_digest, self.disclosures, self.model_digest)


@dataclass(frozen=True)
class PhaseSeconds:
    """Seconds a node spent per phase of one round (encryption overlaps the upload)."""

    train: float = 0.0
    encode: float = 0.0
    encrypt: float = 0.0
    upload: float = 0.0
    precompute: float = 0.0  # made while training, so it overlaps `train`

    @property
    def after_training(self) -> float:
        """The node's part of the critical path: from its update to its last chunk sent."""
        return self.encode + self.encrypt + self.upload


@dataclass(frozen=True)
class RecordPrivacySpent:
    """A hospital's record-level DP-SGD budget spent so far: (epsilon, delta)-DP per `unit` ("patient" or "image"),
    by the PLD accountant; `rdp_epsilon` is the looser RDP bound of the same steps."""

    epsilon: float
    delta: float
    noise_multiplier: float
    unit: str = "image"
    rdp_epsilon: float = 0.0


def disclosures_digest(record_privacy: RecordPrivacySpent | None, masked_class_counts: tuple[int, ...]) -> bytes:
    """SHA-256 of what an upload's last chunk states besides its payload (the record-level privacy spent, the masked
    class counts), in one canonical encoding: the attestation signs it, so no one on the way can alter either."""
    privacy = b"" if record_privacy is None else _frame(
        struct.pack(">ddd", record_privacy.epsilon, record_privacy.delta, record_privacy.noise_multiplier),
        record_privacy.unit.encode(), struct.pack(">d", record_privacy.rdp_epsilon))
    counts = b"".join(struct.pack(">Q", value) for value in masked_class_counts)
    return hashlib.sha256(DISCLOSURES_DOMAIN + _frame(b"\x01" if record_privacy else b"\x00", privacy,
                                                      counts)).digest()


@dataclass(frozen=True)
class UploadChunk:
    round_id: int
    key_id: str
    node_id: str
    index: int
    ciphertexts: tuple[bytes, ...] = ()  # secure mode
    plaintext_values: bytes = b""  # plaintext mode: little-endian float32
    attestation: Attestation | None = None  # the last chunk only
    phases: PhaseSeconds | None = None  # the last chunk only
    attempt: int = 1
    record_privacy: RecordPrivacySpent | None = None  # the last chunk only, from a hospital training with DP-SGD
    masked_class_counts: tuple[int, ...] = ()  # the last chunk only: `pooled_counts.masked_counts`, when sent

    @property
    def payloads(self) -> list[bytes]:
        """What the stream digest covers: the ciphertexts, or the plaintext values as one payload."""
        return list(self.ciphertexts) if self.ciphertexts else [self.plaintext_values]


@dataclass(frozen=True)
class SubmitReceipt:
    round_id: int
    chunks: int
    stream_digest: bytes


@dataclass(frozen=True)
class DecryptManifest:
    """What the aggregator asks the key authority to decrypt: one round attempt's sum and who is in it."""

    round_id: int
    key_id: str
    chunk_count: int
    value_count: int
    attestations: tuple[Attestation, ...]
    layout: SumLayout
    attempt: int = 1
    participants: tuple[str, ...] = ()
    chunk_ciphertexts: int = 0
    plan_digest: bytes = b""
