"""Aggregator gRPC servicer: translates messages to `Coordinator` calls, nothing more."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.aggregator.round_loop import Coordinator
from services.common.errors import BrokenStreamError, IdentityMismatchError, MalformedChunkError
from services.common.grpc_status import translate_errors, translate_stream_errors
from services.common.metrics import ServiceMetrics
from services.common.stream_digest import NodeKeyRegistry
from services.common.tls import peer_common_name

log = logging.getLogger(__name__)


def client_gone(context: grpc.ServicerContext, grace_seconds: float) -> bool:
    """Whether the call is, or within the grace becomes, cancelled: the node went away.

    When a node's connection drops, gRPC may end the request iterator as if the node had closed its side
    cleanly and mark the call cancelled only a moment later, so a stream that ends early cannot be told
    from a truncated one at once. A node that truncates a stream and then cancels within the grace is
    counted as broken too; only the metric's label differs, since no one is left to read the status.
    """
    deadline = time.monotonic() + grace_seconds
    while context.is_active():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def broken_stream(node_id: str | None, received_bytes: int) -> BrokenStreamError:
    if node_id is None:
        return BrokenStreamError("an upload stream broke off before its first chunk")
    return BrokenStreamError(f"stream of node {node_id!r} broke off after {received_bytes} bytes")


class AggregatorServicer(pb_grpc.AggregatorServicer):
    def __init__(self, coordinator: Coordinator, registry: NodeKeyRegistry, metrics: ServiceMetrics,
                 *, check_peer: bool = True, close_grace_seconds: float) -> None:
        self._check_peer = check_peer
        self._close_grace_seconds = close_grace_seconds
        self._coordinator = coordinator
        self._registry = registry
        self._metrics = metrics

    def record_refusal(self, reason: str) -> None:
        self._metrics.record_refusal(reason)

    def _require_peer(self, context: grpc.ServicerContext, node_id: str) -> None:
        """With mTLS, a node speaks only for the name on its certificate."""
        peer = peer_common_name(context)
        if self._check_peer and peer != node_id:
            raise IdentityMismatchError(f"certificate of {peer!r} cannot act for node {node_id!r}")

    @translate_stream_errors
    def Subscribe(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> Iterator[pb.RoundMessage]:
        self._require_peer(context, request.node_id)
        yield from self._coordinator.subscribe(request, context.is_active)

    @translate_errors
    def SubmitUpdate(self, request_iterator: Iterator[pb.UpdateChunk],
                     context: grpc.ServicerContext) -> pb.SubmitReceipt:
        started = time.monotonic()
        try:
            first = next(request_iterator, None)
        except grpc.RpcError as error:
            raise broken_stream(None, 0) from error
        if first is None:
            if client_gone(context, self._close_grace_seconds):
                raise broken_stream(None, 0)
            raise MalformedChunkError("empty update stream")
        self._require_peer(context, first.node_id)
        state, staged = self._coordinator.begin_submission(first)
        try:
            last = first
            staged.add(first)
            for chunk in request_iterator:
                staged.add(chunk)
                last = chunk
            if not last.HasField("attestation"):
                if client_gone(context, self._close_grace_seconds):
                    raise broken_stream(first.node_id, staged.received_bytes)
                raise MalformedChunkError("the last chunk must carry the stream's attestation")
            phases = pb.NodePhaseSeconds()
            phases.CopyFrom(last.phase_seconds)
            verified = staged.finish(last.attestation, self._registry, phases)
        except BaseException as error:
            # A broken, cancelled or refused stream: its staged chunks go, the sums are untouched.
            staged.discard()
            state.abandon_stream(first.node_id)
            if isinstance(error, grpc.RpcError):
                raise broken_stream(first.node_id, staged.received_bytes) from error
            raise
        self._coordinator.complete_submission(state, verified)
        log.info("node %s submitted round %d in %.1f s", first.node_id, first.round_id, time.monotonic() - started)
        return pb.SubmitReceipt(round_id=first.round_id, chunks=verified.header.chunk_count,
                                stream_digest=verified.attestation.stream_digest)

    @translate_errors
    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationAck:
        self._require_peer(context, request.node_id)
        self._coordinator.report_evaluation(request)
        return pb.EvaluationAck()

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.ServiceStatus:
        return pb.ServiceStatus(service="aggregator", holds_secret_key=False,
                                key_id=self._coordinator.key.key_id if self._coordinator.key else "",
                                current_round=self._coordinator.current_round)
