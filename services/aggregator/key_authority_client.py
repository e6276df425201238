"""The aggregator's side of the key authority protocol."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import MalformedChunkError
from services.key_authority.servicer import field_values

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublicKeyInfo:
    context: bytes
    key_id: str
    bits: int
    fields_per_slot: int
    max_participants: int
    slots: int
    min_participants: int
    statistics_bits: int


class KeyAuthorityClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.KeyAuthorityStub(channel)

    def public_key(self, wait_seconds: float = 120.0) -> PublicKeyInfo:
        """The public context, retried while the key authority starts."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                reply = self._stub.GetPublicContext(pb.GetPublicContextRequest(), timeout=30)
                return PublicKeyInfo(reply.context, reply.key_id, reply.bits, reply.fields_per_slot,
                                     reply.max_participants, reply.slots_per_ciphertext, reply.min_participants,
                                     reply.statistics_bits)
            except grpc.RpcError as error:
                if time.monotonic() > deadline or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                log.info("key authority not reachable yet; retrying")
                time.sleep(1.0)

    def decrypt(self, manifest: pb.DecryptManifest, chunks: Iterator[pb.CiphertextChunk]) -> np.ndarray:
        """The sum's field integers mod 2^bits, in order."""

        def requests() -> Iterator[pb.DecryptRequest]:
            yield pb.DecryptRequest(manifest=manifest)
            for chunk in chunks:
                yield pb.DecryptRequest(chunk=chunk)

        parts = []
        for expected, response in enumerate(self._stub.Decrypt(requests(), timeout=1800)):
            if response.index != expected:
                raise MalformedChunkError(f"key authority answered chunk {response.index}, expected {expected}")
            parts.append(field_values(response))
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if values.size != manifest.value_count:
            raise MalformedChunkError(f"key authority returned {values.size} of {manifest.value_count} values")
        return values
