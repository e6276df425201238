"""A node's upload stream and the manifest of a sealed sum, as typed objects.

The wire format lives in `protos/`; `services/common/wire.py` converts at the edge.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.round_plan import SumLayout
from services.common.stream_digest import attestation_message


@dataclass(frozen=True)
class Attestation:
    """A node's signed statement that it streamed exactly these chunks in this round, in this layout."""

    node_id: str
    round_id: int
    key_id: str
    chunk_count: int
    stream_digest: bytes
    signature: bytes
    layout: SumLayout

    def signed_message(self) -> bytes:
        return attestation_message(self.round_id, self.key_id, self.node_id, self.chunk_count, self.stream_digest,
                                   int(self.layout))


@dataclass(frozen=True)
class PhaseSeconds:
    """Seconds a node spent per phase of one round (encryption overlaps the upload)."""

    train: float = 0.0
    encode: float = 0.0
    encrypt: float = 0.0
    upload: float = 0.0


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
    """What the aggregator asks the key authority to decrypt: one round's sum and who is in it."""

    round_id: int
    key_id: str
    chunk_count: int
    value_count: int
    attestations: tuple[Attestation, ...]
    layout: SumLayout
