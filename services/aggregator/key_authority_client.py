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
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.upload import DecryptManifest
from services.common.protocol.wire import decrypt_requests, indexed_field_values_from_wire, public_key_from_wire
from services.common.runtime.retry import RetryPolicy, retry_call
from services.common.runtime.tracing import outgoing_metadata, record_span, span

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
        in all; it refuses a round it has already claimed in its ledger, so a retry never decrypts a round twice. It
        claims a round once the stream's first chunk passes its checks (it decrypts as the chunks arrive), so a retry
        helps only where the stream broke before that: a key authority restarting, a connection cut or a deadline
        passed later in the stream spends the round. A refusal, or no answer within `retry_seconds`, becomes
        `DecryptionRefusedError`."""
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
        with span("aggregator.decrypt_rpc", round=manifest.round_id, attempt=manifest.attempt,
                  chunks=manifest.chunk_count):
            sent = _Timed(chunks)
            parts = []
            responses = self._stub.Decrypt(decrypt_requests(manifest, sent), timeout=1800, metadata=outgoing_metadata())
            first_answer = last_answer = 0
            for expected, response in enumerate(responses):
                last_answer = time.time_ns()
                first_answer = first_answer or last_answer
                index, values = indexed_field_values_from_wire(response)
                if index != expected:
                    raise MalformedChunkError(f"key authority answered chunk {index}, expected {expected}")
                parts.append(values)
            # The stream's stretches: chunks read from staging and handed to gRPC; the key authority's work until
            # its first answer; the answers.
            if sent.first:
                record_span("aggregator.send_chunks", sent.first, sent.last, chunks=sent.count)
                if first_answer:
                    record_span("aggregator.await_answer", sent.last, first_answer)
                    record_span("aggregator.receive_answers", first_answer, last_answer, chunks=len(parts))
            return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class _Timed(Iterator[list[bytes]]):
    """The chunks, noting when the first was asked for and the last handed out."""

    def __init__(self, chunks: Iterator[list[bytes]]) -> None:
        self._chunks, self.first, self.last, self.count = chunks, 0, 0, 0

    def __next__(self) -> list[bytes]:
        if not self.first:
            self.first = time.time_ns()
        chunk = next(self._chunks)
        self.last, self.count = time.time_ns(), self.count + 1
        return chunk
