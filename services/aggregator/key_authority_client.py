"""The aggregator's gRPC client of the key authority."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import DecryptionRefusedError, MalformedChunkError
from services.common.public_key import PublicKeyInfo
from services.common.upload import DecryptManifest
from services.common.wire import decrypt_requests, field_values_from_wire, public_key_from_wire

log = logging.getLogger(__name__)


class KeyAuthorityClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.KeyAuthorityStub(channel)

    def public_key(self, wait_seconds: float = 120.0) -> PublicKeyInfo:
        """The public context, retried while the key authority starts."""
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                return public_key_from_wire(self._stub.GetPublicContext(pb.GetPublicContextRequest(), timeout=30))
            except grpc.RpcError as error:
                if time.monotonic() > deadline or error.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                log.info("key authority not reachable yet; retrying")
                time.sleep(1.0)

    def decrypt(self, manifest: DecryptManifest, chunks: Iterator[list[bytes]]) -> np.ndarray:
        """The sum's field integers mod 2^bits, in order; a refusal becomes `DecryptionRefusedError`."""
        parts = []
        responses = self._stub.Decrypt(decrypt_requests(manifest, chunks), timeout=1800)
        try:
            for expected, response in enumerate(responses):
                if response.index != expected:
                    raise MalformedChunkError(f"key authority answered chunk {response.index}, expected {expected}")
                parts.append(field_values_from_wire(response))
        except grpc.RpcError as error:
            raise DecryptionRefusedError(f"the key authority refused round {manifest.round_id} attempt "
                                         f"{manifest.attempt}: {error.code().name}: {error.details()}") from error
        values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        if values.size != manifest.value_count:
            raise MalformedChunkError(f"key authority returned {values.size} of {manifest.value_count} values")
        return values
