"""KeyAuthority gRPC servicer: translates messages to policy and decryption calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping

import grpc
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import PolicyViolationError
from services.common.protocol.upload import DecryptManifest
from services.common.protocol.wire import (
    decrypt_chunk_from_wire,
    decrypt_manifest_from_wire,
    field_values_to_wire,
    public_key_to_wire,
    status_to_wire,
)
from services.common.runtime.grpc_status import translate_stream_errors
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.tls import AGGREGATOR_NAME, peer_common_name
from services.common.runtime.tracing import incoming_context, span
from services.common.secure_sum.pairwise_masks import MaskScope, authority_unmasks
from services.key_authority.decryption_policy import DecryptionPolicy
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import KeyMaterial
from services.key_authority.sum_decryption import decrypt_stream

log = logging.getLogger(__name__)


class KeyAuthorityServicer(pb_grpc.KeyAuthorityServicer):
    def __init__(self, keys: KeyMaterial, policy: DecryptionPolicy, min_participants: int,
                 *, metrics: ServiceMetrics, node_agreement_keys: Mapping[str, X25519PublicKey], consortium: str,
                 require_aggregator_certificate: bool = True, decryption: DecryptionPool | None = None) -> None:
        self._require_aggregator = require_aggregator_certificate
        self._decryption = decryption
        self._keys = keys
        self._node_agreement_keys = dict(node_agreement_keys)
        self._consortium = consortium
        self._public = keys.public_info(min_participants)
        self._policy = policy
        self._metrics = metrics

    def register(self, server: grpc.Server) -> None:
        pb_grpc.add_KeyAuthorityServicer_to_server(self, server)

    def record_refusal(self, reason: str) -> None:
        self._metrics.record_refusal(reason)

    def GetPublicContext(self, request: pb.GetPublicContextRequest, context: grpc.ServicerContext) -> pb.PublicContext:
        self._metrics.bytes_sent.inc(len(self._keys.public_context))
        return public_key_to_wire(self._public)

    @translate_stream_errors
    def Decrypt(self, request_iterator: Iterator[pb.DecryptRequest],
                context: grpc.ServicerContext) -> Iterator[pb.DecryptResponse]:
        with incoming_context(context.invocation_metadata()), span("ka.decrypt_rpc") as rpc_span:
            peer = peer_common_name(context)
            if self._require_aggregator and peer != AGGREGATOR_NAME:
                raise PolicyViolationError(
                    f"decryption is answered only for the aggregator's certificate, not {peer!r}")
            manifest = decrypt_manifest_from_wire(next(request_iterator, None))
            rpc_span.set_attributes({"round": manifest.round_id, "attempt": manifest.attempt,
                                     "chunks": manifest.chunk_count, "participants": len(manifest.participants)})
            with span("ka.policy_check"):
                self._policy.check(manifest)  # refuses before a single ciphertext is read
            scope = MaskScope(self._consortium, manifest.key_id, manifest.round_id, manifest.attempt,
                              manifest.participants, manifest.plan_digest)
            try:
                with span("ka.mask_agreement"):
                    unmasks = authority_unmasks(self._keys.agreement, self._node_agreement_keys, scope)
            except KeyError as missing:
                raise PolicyViolationError(f"round {manifest.round_id}: {missing.args[0]}") from missing
            log.info("decrypting round %d attempt %d: %d chunks, %d participants, as they arrive", manifest.round_id,
                     manifest.attempt, manifest.chunk_count, len(manifest.participants))
            start = time.perf_counter()
            with span("ka.receive_and_decrypt"):
                # The round goes into the ledger once its first chunk is checked, before anything is decrypted; every
                # chunk is checked and every slot decrypted before any value leaves.
                fields = decrypt_stream(self._keys, manifest, self._chunks(request_iterator), unmasks=unmasks,
                                        claim=lambda: self._claim(manifest), pool=self._decryption)
            self._metrics.observe_phase("decrypt", time.perf_counter() - start)
            with span("ka.answer"):
                for index, values in enumerate(fields):
                    yield field_values_to_wire(index, values)

    def _claim(self, manifest: DecryptManifest) -> None:
        with span("ka.ledger_claim"):
            self._policy.claim(manifest)

    def _chunks(self, request_iterator: Iterator[pb.DecryptRequest]) -> Iterator[tuple[int, list[bytes]]]:
        for expected_index, message in enumerate(request_iterator):
            index, ciphertexts = decrypt_chunk_from_wire(message, expected_index)
            self._metrics.bytes_received.inc(sum(len(c) for c in ciphertexts))
            yield index, ciphertexts

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.ServiceStatus:
        return status_to_wire("key_authority", self._keys.secret_context.is_private(), self._keys.key_id,
                              decrypted_rounds=self._policy.decrypted_rounds)
