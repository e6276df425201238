"""The node's gRPC client of the aggregator and the key authority: typed calls in, typed results out."""

from __future__ import annotations

from collections.abc import Iterator

import grpc

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.evaluation_report import EvaluationReport
from services.common.model_spec import ParameterSpec
from services.common.public_key import PublicKeyInfo
from services.common.round_plan import RoundDecline, RoundMessage
from services.common.upload import SubmitReceipt, UploadChunk
from services.common.wire import (
    decline_to_wire,
    evaluation_to_wire,
    join_to_wire,
    public_key_from_wire,
    receipt_from_wire,
    round_message_from_wire,
    upload_chunk_to_wire,
)


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

    def public_key(self, timeout: float = 60) -> PublicKeyInfo:
        return public_key_from_wire(self._key_authority.GetPublicContext(pb.GetPublicContextRequest(),
                                                                         timeout=timeout, wait_for_ready=True))

    def subscribe(self, node_id: str, spec: ParameterSpec) -> RoundSubscription:
        return RoundSubscription(self._aggregator.Subscribe(join_to_wire(node_id, spec), wait_for_ready=True))

    def submit(self, chunks: Iterator[UploadChunk], timeout: float) -> SubmitReceipt:
        return receipt_from_wire(self._aggregator.SubmitUpdate((upload_chunk_to_wire(c) for c in chunks),
                                                               timeout=timeout))

    def report(self, report: EvaluationReport, timeout: float = 60) -> None:
        self._aggregator.ReportEvaluation(evaluation_to_wire(report), timeout=timeout)

    def decline(self, decline: RoundDecline, timeout: float = 60) -> None:
        self._aggregator.DeclineRound(decline_to_wire(decline), timeout=timeout)
