"""The aggregator servicer's own limits on upload streams, on real threads with a stand-in for the gRPC context."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.servicer import AggregatorServicer
from services.common.runtime.metrics import ServiceMetrics

pytestmark = pytest.mark.unit


class Aborted(Exception):
    pass


class Context:
    """The parts of grpc.ServicerContext the servicer uses; abort raises as gRPC's does."""

    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.cancelled = threading.Event()

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        raise Aborted(details)

    def cancel(self) -> None:
        self.cancelled.set()

    def is_active(self) -> bool:
        return not self.cancelled.is_set()

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no certificate: the servicer runs with check_peer off


class BlockingIntake:
    """Admits a stream, then holds it until released: the node's upload is in progress."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.admitted = threading.Event()

    def begin(self, first: Any) -> tuple[Any, Any]:
        self.admitted.set()
        self.release.wait(10)
        raise Aborted("released")


def _servicer(intake: Any, **limits: Any) -> AggregatorServicer:
    return AggregatorServicer(None, None, intake, board=None, registry=None, metrics=ServiceMetrics("aggregator-test"),  # type: ignore[arg-type]
                              check_peer=False, close_grace_seconds=0.1, **limits)


def _chunk(node: str) -> pb.UpdateChunk:
    return pb.UpdateChunk(round_id=1, key_id="k", node_id=node, index=0, attempt=1)


def _idle(stop: threading.Event) -> Iterator[pb.UpdateChunk]:
    stop.wait(10)
    return
    yield  # pragma: no cover


def test_a_second_upload_of_the_same_node_is_refused_while_its_first_is_open() -> None:
    intake = BlockingIntake()
    servicer = _servicer(intake)
    first = threading.Thread(target=lambda: pytest.raises(Aborted, servicer.SubmitUpdate,
                                                          iter([_chunk("hospital-1")]), Context()))
    first.start()
    assert intake.admitted.wait(5)
    context = Context()
    with pytest.raises(Aborted, match="already has an upload stream open"):
        servicer.SubmitUpdate(iter([_chunk("hospital-1")]), context)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    intake.release.set()
    first.join(5)


def test_streams_beyond_the_cap_are_refused_at_once_and_an_idle_one_is_cut_at_the_deadline() -> None:
    servicer = _servicer(BlockingIntake(), max_streams=1, first_chunk_seconds=0.5)
    stop = threading.Event()
    idle_context, outcome = Context(), {}

    def idle() -> None:
        try:
            servicer.SubmitUpdate(_idle(stop), idle_context)
        except Aborted as error:
            outcome["details"] = str(error)

    thread = threading.Thread(target=idle)
    thread.start()
    assert not idle_context.cancelled.wait(0.2)
    context = Context()
    with pytest.raises(Aborted, match="upload streams are open"):
        servicer.SubmitUpdate(iter([_chunk("hospital-2")]), context)
    assert context.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert idle_context.cancelled.wait(5)  # the deadline cancels the call ...
    stop.set()  # ... which ends the wait for its first chunk
    thread.join(5)
    assert idle_context.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "sent no first chunk within 0.5 s" in outcome["details"]
