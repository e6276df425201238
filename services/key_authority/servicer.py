"""KeyAuthority gRPC servicer: translates messages to policy and decryption calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import MalformedChunkError, PolicyViolationError
from services.common.grpc_status import translate_stream_errors
from services.common.he_codec import decrypt_to_slot_integers
from services.common.metrics import ServiceMetrics
from services.common.packing import unpack_fields
from services.common.tls import AGGREGATOR_NAME, peer_common_name
from services.key_authority.decryption_policy import AttestationClaim, DecryptionPolicy, ManifestClaim
from services.key_authority.key_store import KeyMaterial

log = logging.getLogger(__name__)


def manifest_claim(manifest: pb.DecryptManifest) -> ManifestClaim:
    return ManifestClaim(
        round_id=manifest.round_id,
        key_id=manifest.key_id,
        chunk_count=manifest.chunk_count,
        value_count=manifest.value_count,
        attestations=tuple(
            AttestationClaim(a.node_id, a.round_id, a.key_id, a.chunk_count, a.stream_digest, a.signature, a.layout)
            for a in manifest.attestations
        ),
        layout=manifest.layout,
    )


class KeyAuthorityServicer(pb_grpc.KeyAuthorityServicer):
    def __init__(self, keys: KeyMaterial, policy: DecryptionPolicy, min_participants: int,
                 metrics: ServiceMetrics, decrypted_rounds: Iterator[int] | None = None,
                 require_aggregator_certificate: bool = True) -> None:
        self._require_aggregator = require_aggregator_certificate
        self._keys = keys
        self._policy = policy
        self._min_participants = min_participants
        self._metrics = metrics
        self.decrypted: list[int] = list(decrypted_rounds or [])

    def record_refusal(self, reason: str) -> None:
        self._metrics.record_refusal(reason)

    def GetPublicContext(self, request: pb.GetPublicContextRequest, context: grpc.ServicerContext) -> pb.PublicContext:
        self._metrics.bytes_sent.inc(len(self._keys.public_context))
        layout = self._keys.layout
        return pb.PublicContext(
            context=self._keys.public_context, key_id=self._keys.key_id, bits=layout.bits,
            fields_per_slot=layout.fields_per_slot, max_participants=layout.max_participants,
            slots_per_ciphertext=self._keys.params.slots, min_participants=self._min_participants,
            statistics_bits=self._keys.statistics_layout.bits,
        )

    @translate_stream_errors
    def Decrypt(self, request_iterator: Iterator[pb.DecryptRequest],
                context: grpc.ServicerContext) -> Iterator[pb.DecryptResponse]:
        peer = peer_common_name(context)
        if self._require_aggregator and peer != AGGREGATOR_NAME:
            raise PolicyViolationError(f"decryption is answered only for the aggregator's certificate, not {peer!r}")
        first = next(request_iterator, None)
        if first is None or not first.HasField("manifest"):
            raise MalformedChunkError("a decryption stream must open with its manifest")
        if first.manifest.layout not in (pb.SUM_LAYOUT_UPDATE, pb.SUM_LAYOUT_STATISTICS):
            raise MalformedChunkError(f"manifest names an unknown sum layout {first.manifest.layout}")
        manifest = manifest_claim(first.manifest)
        self._policy.authorize(manifest)  # refuses before a single ciphertext is decrypted
        self.decrypted.append(manifest.round_id)
        log.info("decrypting round %d: %d chunks, %d participants", manifest.round_id, manifest.chunk_count,
                 len(manifest.attestations))
        start = time.perf_counter()
        slots = self._keys.params.slots
        statistics = first.manifest.layout == pb.SUM_LAYOUT_STATISTICS
        layout = self._keys.statistics_layout if statistics else self._keys.layout
        dtype = "<u8" if statistics else "<u4"
        remaining = manifest.value_count
        for expected_index, message in enumerate(request_iterator):
            chunk = message.chunk
            if not message.HasField("chunk") or chunk.index != expected_index or expected_index >= manifest.chunk_count:
                raise MalformedChunkError(f"expected chunk {expected_index} of {manifest.chunk_count}")
            self._metrics.bytes_received.inc(sum(len(c) for c in chunk.ciphertexts))
            slot_integers = decrypt_to_slot_integers(self._keys.secret_context, list(chunk.ciphertexts), slots)
            count = min(remaining, slot_integers.size * layout.fields_per_slot)
            fields = unpack_fields(slot_integers, layout, count).astype(dtype)
            remaining -= count
            yield pb.DecryptResponse(index=chunk.index, field_values=fields.tobytes(), value_count=count,
                                     value_bytes=fields.itemsize)
        if remaining:
            raise MalformedChunkError(f"stream ended with {remaining} values of the manifest undelivered")
        self._metrics.observe_phase("decrypt", time.perf_counter() - start)

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.ServiceStatus:
        return pb.ServiceStatus(service="key_authority", holds_secret_key=self._keys.secret_context.is_private(),
                                key_id=self._keys.key_id, decrypted_rounds=sorted(self.decrypted))


def field_values(response: pb.DecryptResponse) -> np.ndarray:
    """The integers of one response, for the aggregator."""
    if response.value_bytes not in (0, 4, 8):
        raise MalformedChunkError(f"response {response.index} has {response.value_bytes}-byte values; 4 or 8 expected")
    values = np.frombuffer(response.field_values, dtype="<u8" if response.value_bytes == 8 else "<u4")
    if values.size != response.value_count:
        raise MalformedChunkError(f"response {response.index} carries {values.size} of {response.value_count} values")
    return values.astype(np.int64)
