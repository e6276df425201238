"""The aggregator's gRPC client of the key authority."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import DecryptionRefusedError, MalformedChunkError
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.upload import DecryptManifest
from services.common.protocol.wire import decrypt_requests, indexed_field_values_from_wire, public_key_from_wire
from services.common.runtime.retry import RetryPolicy, retry_call

log = logging.getLogger(__name__)
MAX_RETRY_PAUSE = 15.0


class KeyAuthorityClient:
    def __init__(self, channel: grpc.Channel) -> None:
        self._stub = pb_grpc.KeyAuthorityStub(channel)

    def public_key(self, wait_seconds: float = 120.0) -> PublicKeyInfo:
        """The public context, retried while the key authority starts."""
        policy = RetryPolicy({grpc.StatusCode.UNAVAILABLE}, seconds=wait_seconds, multiplier=1.0)
        return public_key_from_wire(retry_call(
            lambda: self._stub.GetPublicContext(pb.GetPublicContextRequest(), timeout=30), policy,
            "key authority not reachable yet", log=log))

    def decrypt(self, manifest: DecryptManifest, chunks: Callable[[], Iterator[list[bytes]]],
                retry_seconds: float = 0.0, stop: threading.Event | None = None) -> np.ndarray:
        """The sum's field integers mod 2^bits, in order. While the key authority cannot be reached (UNAVAILABLE: down
        or restarting), the whole request is sent again, after 1, 2, 4 ... (at most 15) seconds, for `retry_seconds`
        in all; it refuses a round it has already claimed in its ledger, so a retry never decrypts a round twice. A
        refusal, or no answer within `retry_seconds`, becomes `DecryptionRefusedError`."""
        policy = RetryPolicy({grpc.StatusCode.UNAVAILABLE}, seconds=retry_seconds, max_pause=MAX_RETRY_PAUSE)
        try:
            values = retry_call(lambda: self._decrypt_once(manifest, chunks()), policy,
                                f"round {manifest.round_id}: key authority unreachable, decryption", log=log, stop=stop)
        except grpc.RpcError as error:
            raise DecryptionRefusedError(f"the key authority refused round {manifest.round_id} attempt "
                                         f"{manifest.attempt}: {error.code().name}: {error.details()}") from error
        if values.size != manifest.value_count:
            raise MalformedChunkError(f"key authority returned {values.size} of {manifest.value_count} values")
        return values

    def _decrypt_once(self, manifest: DecryptManifest, chunks: Iterator[list[bytes]]) -> np.ndarray:
        parts = []
        responses = self._stub.Decrypt(decrypt_requests(manifest, chunks), timeout=1800)
        for expected, response in enumerate(responses):
            index, values = indexed_field_values_from_wire(response)
            if index != expected:
                raise MalformedChunkError(f"key authority answered chunk {index}, expected {expected}")
            parts.append(values)
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
