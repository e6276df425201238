"""The node's gRPC client of the aggregator and the key authority: typed calls in, typed results out."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.ml.evaluation_report import EvaluationReport, MaskedEvaluationReport
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundDecline, RoundMessage
from services.common.protocol.upload import SubmitReceipt, UploadChunk
from services.common.protocol.wire import (
    decline_to_wire,
    evaluation_to_wire,
    join_to_wire,
    public_key_from_wire,
    receipt_from_wire,
    round_message_from_wire,
    upload_chunk_to_wire,
)
from services.common.runtime.retry import RetryPolicy, retry_call
from services.common.runtime.tls import TlsSettings


class RoundSubscription:
    """The aggregator's stream of round messages; `cancel` ends it."""

    def __init__(self, stream: grpc.Future) -> None:  # a response-streaming call: an iterator with cancel()
        self._stream = stream

    def __iter__(self) -> Iterator[RoundMessage]:
        for message in self._stream:
            yield round_message_from_wire(message)

    def cancel(self) -> None:
        self._stream.cancel()


class ConsortiumClient:
    def __init__(self, aggregator: grpc.Channel, key_authority: grpc.Channel) -> None:
        self._aggregator = pb_grpc.AggregatorStub(aggregator)
        self._key_authority = pb_grpc.KeyAuthorityStub(key_authority)

    def probe_aggregator(self, timeout: float) -> None:
        self._aggregator.GetStatus(pb.GetStatusRequest(), timeout=timeout)

    def probe_key_authority(self, timeout: float) -> None:
        self._key_authority.GetStatus(pb.GetStatusRequest(), timeout=timeout)

    def public_key(self, timeout: float = 60) -> PublicKeyInfo:
        return public_key_from_wire(self._key_authority.GetPublicContext(pb.GetPublicContextRequest(),
                                                                         timeout=timeout, wait_for_ready=True))

    def subscribe(self, node_id: str, spec: ParameterSpec, classes: ClassRoster) -> RoundSubscription:
        return RoundSubscription(self._aggregator.Subscribe(join_to_wire(node_id, spec, classes),
                                                            wait_for_ready=True))

    def submit(self, chunks: Iterator[UploadChunk], timeout: float) -> SubmitReceipt:
        return receipt_from_wire(self._aggregator.SubmitUpdate((upload_chunk_to_wire(c) for c in chunks),
                                                               timeout=timeout))

    def report(self, report: EvaluationReport | MaskedEvaluationReport, timeout: float = 60) -> None:
        self._aggregator.ReportEvaluation(evaluation_to_wire(report), timeout=timeout)

    def decline(self, decline: RoundDecline, timeout: float = 60) -> None:
        self._aggregator.DeclineRound(decline_to_wire(decline), timeout=timeout)


class UnreachableError(Exception):
    """A peer the node cannot talk to: the message is one line saying what to check."""


def _connection_problem(peer: str, address: str, error: grpc.RpcError, tls: TlsSettings) -> tuple[str, bool]:
    """One line about a failed first call, and whether it is certain to fail again (a TLS refusal)."""
    details = error.details() or ""
    last = details.rsplit("last error:", 1)[-1].strip()
    files = (f"FEDXRAY_NODE_TLS_CERT={tls.tls_cert}, FEDXRAY_NODE_TLS_KEY={tls.tls_key}, "
             f"FEDXRAY_NODE_TLS_CA={tls.tls_ca}")
    if "handshake" in details.lower() or "ssl" in details.lower():
        reason = last.split("OPENSSL_internal:", 1)[-1] if "OPENSSL_internal:" in last else last
        return (f"TLS handshake with the {peer} at {address} failed ({reason.strip()}): its certificate is not "
                f"signed by this hospital's CA. Check {files}: all must come from the consortium's CA"), True
    if "Socket closed" in details:
        return (f"the {peer} at {address} closed the connection during the TLS handshake: it likely refuses this "
                f"hospital's certificate (signed by another CA?). Check {files}"), True
    return f"cannot reach {peer} at {address} ({error.code().name}: {last or details})", False


UNREACHABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def wait_until_reachable(peer: str, address: str, probe: Callable[[float], object], *, tls: TlsSettings,
                         seconds: float, log: logging.Logger) -> None:
    """Call `probe(timeout)` until it answers, logging each failure with the time to the next try (backoff 1 s
    doubling to 30 s); an UnreachableError with one line to act on after `seconds`, or at once for a TLS
    refusal, which retrying cannot cure."""
    deadline = time.monotonic() + seconds
    policy = RetryPolicy(UNREACHABLE_CODES, seconds=seconds, max_pause=30.0)
    try:
        retry_call(lambda: probe(min(10.0, max(1.0, deadline - time.monotonic()))), policy, f"cannot reach {peer}",
                   log=log, may_retry=lambda error: not _connection_problem(peer, address, error, tls)[1],
                   describe=lambda error: _connection_problem(peer, address, error, tls)[0])
    except grpc.RpcError as error:
        if error.code() not in UNREACHABLE_CODES:
            return  # it answered: the call itself was refused, which the caller will see for itself
        line, certain = _connection_problem(peer, address, error, tls)
        raise UnreachableError(line if certain else f"{line}; gave up after {seconds:.0f} s "
                               "(FEDXRAY_NODE_CONNECT_SECONDS)") from None
