"""Aggregator gRPC servicer: translates messages to calls on the round's parts, nothing more."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import grpc

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.aggregator.evaluation_board import EvaluationBoard
from services.aggregator.membership import Membership
from services.aggregator.round_loop import RoundLoop
from services.aggregator.upload_intake import UploadIntake
from services.common.errors import (
    BrokenStreamError,
    IdentityMismatchError,
    MalformedChunkError,
    ServerLimitError,
    StreamDeadlineError,
)
from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.protocol.upload import PhaseSeconds, SubmitReceipt, UploadChunk
from services.common.protocol.wire import (
    decline_from_wire,
    evaluation_from_wire,
    join_from_wire,
    receipt_to_wire,
    round_message_to_wire,
    sender_from_wire,
    status_to_wire,
    upload_chunk_from_wire,
)
from services.common.runtime.grpc_status import translate_errors, translate_stream_errors
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.tls import peer_common_name

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


@contextlib.contextmanager
def call_deadline(context: grpc.ServicerContext, seconds: float) -> Iterator[threading.Event]:
    """Cancel the call if the block has not ended within `seconds`; the event tells whether that happened."""
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        context.cancel()

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    try:
        yield expired
    finally:
        timer.cancel()


def _typed_chunks(request_iterator: Iterator[pb.UpdateChunk]) -> Iterator[UploadChunk]:
    for message in request_iterator:
        yield upload_chunk_from_wire(message)


class AggregatorServicer(pb_grpc.AggregatorServicer):
    def __init__(self, loop: RoundLoop, membership: Membership, intake: UploadIntake, *, board: EvaluationBoard,
                 registry: NodeKeyRegistry, metrics: ServiceMetrics, check_peer: bool = True,
                 close_grace_seconds: float, first_chunk_seconds: float = 30.0,
                 stream_seconds: float = 1800.0, max_streams: int = 64) -> None:
        self._loop = loop
        self._membership = membership
        self._intake = intake
        self._board = board
        self._registry = registry
        self._metrics = metrics
        self._check_peer = check_peer
        self._close_grace_seconds = close_grace_seconds
        self._first_chunk_seconds = first_chunk_seconds
        self._stream_seconds = stream_seconds
        self._uploading: set[str] = set()  # nodes with an upload stream open: at most one each
        self._max_streams = max_streams
        self._streams = 0  # upload streams open, first chunk or not
        self._uploading_lock = threading.Lock()

    def register(self, server: grpc.Server) -> None:
        pb_grpc.add_AggregatorServicer_to_server(self, server)

    def record_refusal(self, reason: str) -> None:
        self._metrics.record_refusal(reason)

    def _require_peer(self, context: grpc.ServicerContext, node_id: str) -> None:
        """With mTLS, a node speaks only for the name on its certificate."""
        peer = peer_common_name(context)
        if self._check_peer and peer != node_id:
            raise IdentityMismatchError(f"certificate of {peer!r} cannot act for node {node_id!r}")

    @translate_stream_errors
    def Subscribe(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> Iterator[pb.RoundMessage]:
        self._require_peer(context, sender_from_wire(request))
        node_id, spec, classes = join_from_wire(request)
        for message in self._membership.subscribe(node_id, spec, classes, context.is_active):
            yield round_message_to_wire(message)

    @translate_errors
    def SubmitUpdate(self, request_iterator: Iterator[pb.UpdateChunk],
                     context: grpc.ServicerContext) -> pb.SubmitReceipt:
        # With mTLS the caller is known before its first chunk: a slot is the open attempt's participant's, one
        # stream each, so a member that opens idle streams holds at most its own slot and never another's.
        identity = peer_common_name(context) if self._check_peer else None
        with self._uploading_lock:
            if identity is not None:
                self._intake.require_slot(identity)
                if identity in self._uploading:
                    raise ServerLimitError(f"node {identity!r} already has an upload stream open")
                self._uploading.add(identity)
            elif self._streams >= self._max_streams:
                raise ServerLimitError(f"{self._streams} upload streams are open, the most this server takes")
            self._streams += 1
        try:
            with self._metrics.upload_streams.track_inprogress():
                return self._submit(request_iterator, context, identity)
        finally:
            with self._uploading_lock:
                self._streams -= 1
                if identity is not None:
                    self._uploading.discard(identity)

    def _submit(self, request_iterator: Iterator[pb.UpdateChunk], context: grpc.ServicerContext,
                identity: str | None) -> pb.SubmitReceipt:
        started = time.monotonic()
        chunks = _typed_chunks(request_iterator)
        # A stream that sends nothing would hold a server thread for ever: past the deadline the call is cancelled,
        # which ends the wait for its next chunk.
        with call_deadline(context, self._first_chunk_seconds) as expired:
            try:
                first = next(chunks, None)
            except grpc.RpcError as error:
                raise self._deadline_or_broken(expired, None, 0, "sent no first chunk") from error
        if first is None:
            if expired.is_set() or client_gone(context, self._close_grace_seconds):
                raise self._deadline_or_broken(expired, None, 0, "sent no first chunk")
            raise MalformedChunkError("empty update stream")
        self._require_peer(context, first.node_id)
        if identity is not None:  # its slot was taken at the start
            return self._stage(first, chunks, context, started)
        with self._uploading_lock:
            if first.node_id in self._uploading:
                raise ServerLimitError(f"node {first.node_id!r} already has an upload stream open")
            self._uploading.add(first.node_id)
        try:
            return self._stage(first, chunks, context, started)
        finally:
            with self._uploading_lock:
                self._uploading.discard(first.node_id)

    def _deadline_or_broken(self, expired: threading.Event, node_id: str | None, received: int,
                            what: str) -> Exception:
        if expired.is_set():
            limit = self._first_chunk_seconds if node_id is None else self._stream_seconds
            return StreamDeadlineError(f"an upload stream {what} within {limit:g} s")
        return broken_stream(node_id, received)

    def _stage(self, first: UploadChunk, chunks: Iterator[UploadChunk], context: grpc.ServicerContext,
               started: float) -> pb.SubmitReceipt:
        with call_deadline(context, max(0.0, self._stream_seconds - (time.monotonic() - started))) as expired:
            return self._stage_until_done(first, chunks, context, started=started, expired=expired)

    def _stage_until_done(self, first: UploadChunk, chunks: Iterator[UploadChunk], context: grpc.ServicerContext,
                          *, started: float, expired: threading.Event) -> pb.SubmitReceipt:
        state, staged = self._intake.begin(first)
        try:
            last = first
            staged.add(first)
            for chunk in chunks:
                staged.add(chunk)
                last = chunk
            if last.attestation is None:
                if expired.is_set() or client_gone(context, self._close_grace_seconds):
                    raise self._deadline_or_broken(expired, first.node_id, staged.received_bytes, "did not finish")
                raise MalformedChunkError("the last chunk must carry the stream's attestation")
            verified = staged.finish(last.attestation, self._registry, last.phases or PhaseSeconds(),
                                     record_privacy=last.record_privacy,
                                     masked_class_counts=last.masked_class_counts)
        except BaseException as error:
            # A broken, cancelled or refused stream: what it folded is subtracted again (from its staged chunks,
            # so before they go), and the sums are as if it had never come.
            try:
                state.abandon_stream(first.node_id)
            finally:
                staged.discard()
            if isinstance(error, grpc.RpcError):
                raise self._deadline_or_broken(expired, first.node_id, staged.received_bytes,
                                               "did not finish") from error
            raise
        self._intake.complete(state, verified)
        log.info("node %s submitted round %d in %.1f s", first.node_id, first.round_id, time.monotonic() - started)
        return receipt_to_wire(SubmitReceipt(first.round_id, verified.header.chunk_count,
                                             verified.attestation.stream_digest))

    @translate_errors
    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationAck:
        self._require_peer(context, sender_from_wire(request))
        report = evaluation_from_wire(request)
        self._membership.require_member(report.node_id)
        self._board.report(report)
        return pb.EvaluationAck()

    @translate_errors
    def DeclineRound(self, request: pb.RoundDecline, context: grpc.ServicerContext) -> pb.DeclineAck:
        self._require_peer(context, sender_from_wire(request))
        decline = decline_from_wire(request)
        self._membership.require_member(decline.node_id)
        self._intake.decline(decline)
        return pb.DeclineAck()

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.ServiceStatus:
        return status_to_wire("aggregator", False, self._loop.key.key_id if self._loop.key else "",
                              current_round=self._loop.current_round)
