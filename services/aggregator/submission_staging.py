"""One update stream, staged on disk until it has completed and verified.

Memory stays O(chunk) per stream: every chunk is checked (header, order, size,
ciphertexts deserialize) and appended to a staging file, never kept. Only a
stream whose digest and signed attestation verify is folded into the round's
sums; anything else is deleted and adds nothing.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.common.errors import DigestMismatchError, MalformedChunkError
from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.stream_digest import StreamDigest
from services.common.protocol.upload import (
    Attestation,
    PhaseSeconds,
    RecordPrivacySpent,
    UploadChunk,
    disclosures_digest,
)
from services.common.secure_sum.pooled_counts import COUNT_BITS, MAX_CLASSES

_LENGTH = struct.Struct(">Q")


@dataclass(frozen=True)
class StreamHeader:
    round_id: int
    key_id: str
    node_id: str
    secure: bool
    chunk_count: int
    values_per_plaintext_chunk: int
    dimension: int
    layout: SumLayout  # the layout the round's uploads are encoded in
    attempt: int = 1
    participant_set: bytes = b""  # participant_set_hash of the attempt's set
    chunk_ciphertexts: int = 0
    plan_digest: bytes = b""  # of the plan every upload of the attempt must have followed
    model_digest: bytes = b""  # of the model the plan sent


@dataclass(frozen=True)
class VerifiedSubmission:
    header: StreamHeader
    attestation: Attestation
    path: Path
    phase_seconds: PhaseSeconds
    received_bytes: int
    record_privacy: RecordPrivacySpent | None = None  # what the node says it has spent (informational)
    masked_class_counts: tuple[int, ...] = ()  # its class counts masked for the participant set, when it sent them


class StagedSubmission:
    def __init__(self, directory: Path, header: StreamHeader,
                 check_ciphertexts: Callable[[int, list[bytes]], object],
                 on_staged: Callable[[int, object], None] | None = None) -> None:
        """`check_ciphertexts(index, payloads)` refuses a bad chunk before anything of it is kept and returns what it
        parsed; `on_staged(index, parsed)` runs once the chunk is on disk (flushed), where a later subtraction can
        read it back."""
        self.header = header
        self._check_ciphertexts = check_ciphertexts
        self._on_staged = on_staged
        self._parsed: object = None
        self._digest = StreamDigest(header.round_id, header.key_id, header.node_id, header.attempt)
        self._path = directory / f"round{header.round_id}-attempt{header.attempt}-{header.node_id}.staged"
        directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self._path, "wb")
        self._next_index = 0
        self.received_bytes = 0

    def add(self, chunk: UploadChunk) -> None:
        header = self.header
        if (chunk.round_id, chunk.attempt, chunk.key_id, chunk.node_id) != (
                header.round_id, header.attempt, header.key_id, header.node_id):
            raise MalformedChunkError(f"chunk {chunk.index} changes round, attempt, key or node mid-stream")
        if chunk.index != self._next_index or chunk.index >= header.chunk_count:
            raise MalformedChunkError(
                f"chunk {chunk.index} out of order: expected {self._next_index} of {header.chunk_count}")
        payloads = self._payloads(chunk)
        self._digest.add_chunk(chunk.index, payloads)
        for payload in payloads:
            self._file.write(_LENGTH.pack(len(payload)) + payload)
            self.received_bytes += len(payload)
        self._next_index += 1
        if self._on_staged is not None and self.header.secure:
            self._file.flush()
            parsed, self._parsed = self._parsed, None
            self._on_staged(chunk.index, parsed)

    @property
    def path(self) -> Path:
        return self._path

    def _payloads(self, chunk: UploadChunk) -> list[bytes]:
        if self.header.secure:
            if chunk.plaintext_values or not chunk.ciphertexts:
                raise MalformedChunkError(f"chunk {chunk.index} of a secure round must carry ciphertexts only")
            payloads = list(chunk.ciphertexts)
            self._parsed = self._check_ciphertexts(chunk.index, payloads)
            return payloads
        expected = min(self.header.values_per_plaintext_chunk,
                       self.header.dimension - chunk.index * self.header.values_per_plaintext_chunk)
        if chunk.ciphertexts or len(chunk.plaintext_values) != 4 * expected:
            raise MalformedChunkError(f"plaintext chunk {chunk.index} must carry {expected} float32 values")
        return [chunk.plaintext_values]

    def finish(self, attestation: Attestation, registry: NodeKeyRegistry, phase_seconds: PhaseSeconds,
               *, record_privacy: RecordPrivacySpent | None = None,
               masked_class_counts: tuple[int, ...] = ()) -> VerifiedSubmission:
        """Check completeness, digest and signature; the result may be folded."""
        self._file.close()
        header = self.header
        if self._next_index != header.chunk_count:
            raise MalformedChunkError(f"stream ended after {self._next_index} of {header.chunk_count} chunks")
        if attestation.stream_digest != self._digest.digest():
            raise DigestMismatchError(f"stream digest of node {header.node_id!r} does not match its chunks")
        if (attestation.node_id, attestation.round_id, attestation.attempt, attestation.key_id, attestation.chunk_count,
                attestation.layout, attestation.participant_set, attestation.value_count,
                attestation.chunk_ciphertexts, attestation.plan_digest, attestation.model_digest) != (
                header.node_id, header.round_id, header.attempt, header.key_id, header.chunk_count, header.layout,
                header.participant_set, header.dimension, header.chunk_ciphertexts, header.plan_digest,
                header.model_digest):
            raise DigestMismatchError("attestation names another node, round, attempt, key, size, layout, "
                                      "participant set, plan or model")
        registry.verify(header.node_id, attestation.signed_message(), attestation.signature)
        if disclosures_digest(record_privacy, masked_class_counts) != attestation.disclosures:
            raise DigestMismatchError(f"node {header.node_id!r}'s record-level privacy or masked class counts are not "
                                      "what its signature covers")
        if record_privacy is not None and not (math.isfinite(record_privacy.epsilon) and record_privacy.epsilon >= 0
                                               and 0 < record_privacy.delta < 1):
            raise MalformedChunkError(f"node {header.node_id!r} reports record-level privacy ({record_privacy.epsilon}, "
                                      f"{record_privacy.delta}), which is no (epsilon, delta)")
        if any(value >= 1 << COUNT_BITS for value in masked_class_counts) or len(masked_class_counts) > MAX_CLASSES:
            raise MalformedChunkError(f"node {header.node_id!r} sent {len(masked_class_counts)} masked class counts, "
                                      f"which must be at most {MAX_CLASSES} values below 2^{COUNT_BITS}")
        return VerifiedSubmission(header, attestation, self._path, phase_seconds, self.received_bytes,
                                  record_privacy, masked_class_counts)

    def discard(self) -> None:
        self._file.close()
        self._path.unlink(missing_ok=True)


def read_staged(path: Path, per_chunk: int) -> Iterator[list[bytes]]:
    """The staged payloads again, `per_chunk` at a time (the last chunk may be shorter)."""
    with open(path, "rb") as handle:
        chunk: list[bytes] = []
        while header := handle.read(_LENGTH.size):
            (length,) = _LENGTH.unpack(header)
            chunk.append(handle.read(length))
            if len(chunk) == per_chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def plaintext_values(payload: bytes) -> np.ndarray:
    return np.frombuffer(payload, dtype="<f4").astype(np.float64)
