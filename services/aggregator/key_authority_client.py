"""The aggregator's gRPC client of the key authority."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.errors import DecryptionRefusedError, MalformedChunkError
from services.common.public_key import PublicKeyInfo
from services.common.upload import DecryptManifest
from services.common.wire import decrypt_requests, field_values_from_wire, public_key_from_wire

log = logging.getLogger(__name__)
MAX_RETRY_PAUSE = 15.0


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

    def decrypt(self, manifest: DecryptManifest, chunks: Callable[[], Iterator[list[bytes]]],
                retry_seconds: float = 0.0, stop: threading.Event | None = None) -> np.ndarray:
        """The sum's field integers mod 2^bits, in order. While the key authority cannot be reached (UNAVAILABLE: down
        or restarting), the whole request is sent again, after 1, 2, 4 ... (at most 15) seconds, for `retry_seconds`
        in all; it refuses a round it has already claimed in its ledger, so a retry never decrypts a round twice. A
        refusal, or no answer within `retry_seconds`, becomes `DecryptionRefusedError`."""
        deadline, pause = time.monotonic() + retry_seconds, 1.0
        while True:
            try:
                values = self._decrypt_once(manifest, chunks())
                break
            except grpc.RpcError as error:
                retry = (error.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() + pause < deadline
                         and not (stop is not None and stop.is_set()))
                if not retry:
                    raise DecryptionRefusedError(f"the key authority refused round {manifest.round_id} attempt "
                                                 f"{manifest.attempt}: {error.code().name}: {error.details()}"
                                                 ) from error
                log.warning("round %d: key authority unreachable (%s); retrying the decryption in %.0f s",
                            manifest.round_id, error.details(), pause)
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
                pause = min(pause * 2, MAX_RETRY_PAUSE)
        if values.size != manifest.value_count:
            raise MalformedChunkError(f"key authority returned {values.size} of {manifest.value_count} values")
        return values

    def _decrypt_once(self, manifest: DecryptManifest, chunks: Iterator[list[bytes]]) -> np.ndarray:
        parts = []
        responses = self._stub.Decrypt(decrypt_requests(manifest, chunks), timeout=1800)
        for expected, response in enumerate(responses):
            if response.index != expected:
                raise MalformedChunkError(f"key authority answered chunk {response.index}, expected {expected}")
            parts.append(field_values_from_wire(response))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
