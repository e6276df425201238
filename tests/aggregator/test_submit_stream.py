"""How the aggregator names an upload that ends early: broken (the node went away) or malformed (truncated).

The servicer runs here against stand-ins for gRPC's context and the upload intake, because the race it
resolves (the request iterator ends before gRPC marks the call cancelled) cannot be staged on purpose
with real processes. The real crash is tested end to end in tests/e2e/test_upload_faults.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.servicer import AggregatorServicer
from services.common.protocol.upload import UploadChunk
from services.common.runtime.metrics import ServiceMetrics

GRACE = 0.2


class Context:
    """Active for the first `active_polls` calls of is_active(), then cancelled (None: never)."""

    def __init__(self, active_polls: int | None) -> None:
        self.active_polls = active_polls
        self.polls = 0
        self.status: grpc.StatusCode | None = None

    def is_active(self) -> bool:
        self.polls += 1
        return self.active_polls is None or self.polls <= self.active_polls

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}  # no TLS

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.status = code
        raise RuntimeError(details)  # as grpc's abort does: the handler ends here


class Staged:
    received_bytes = 0

    def __init__(self) -> None:
        self.discarded = False

    def add(self, chunk: UploadChunk) -> None:
        self.received_bytes += sum(len(payload) for payload in chunk.payloads)

    def discard(self) -> None:
        self.discarded = True


class Submissions:
    """Stand-in upload intake, round state and metrics: records what the servicer did."""

    def __init__(self) -> None:
        self.upload_streams = ServiceMetrics("aggregator").upload_streams
        self.staged = Staged()
        self.abandoned: list[str] = []
        self.refusals: list[str] = []

    def begin(self, first: UploadChunk) -> tuple[Submissions, Staged]:
        return self, self.staged

    def abandon_stream(self, node_id: str) -> None:
        self.abandoned.append(node_id)

    def record_refusal(self, reason: str) -> None:
        self.refusals.append(reason)


def _submit(chunks: Iterator[pb.UpdateChunk], context: Context) -> tuple[Submissions, str]:
    fakes = Submissions()
    servicer = AggregatorServicer(None, None, fakes, board=None, registry=None, metrics=fakes, check_peer=False,  # type: ignore[arg-type]
                                  close_grace_seconds=GRACE)
    with pytest.raises(RuntimeError) as aborted:
        servicer.SubmitUpdate(chunks, context)  # type: ignore[arg-type]
    return fakes, str(aborted.value)


def _chunk() -> pb.UpdateChunk:
    return pb.UpdateChunk(round_id=1, key_id="k", node_id="hospital-2", index=0, ciphertexts=[b"x" * 100])


def _then_broken(*chunks: pb.UpdateChunk) -> Iterator[pb.UpdateChunk]:
    yield from chunks
    raise grpc.RpcError()  # what gRPC's request iterator raises once the call is cancelled


def test_a_stream_that_ends_early_and_is_cancelled_soon_after_is_broken_not_malformed() -> None:
    context = Context(active_polls=3)
    fakes, details = _submit(iter([_chunk()]), context)
    assert fakes.upload_streams._value.get() == 0  # counted while it was received, not after
    assert fakes.refusals == ["broken_stream"]
    assert context.status == grpc.StatusCode.CANCELLED
    assert details == "stream of node 'hospital-2' broke off after 100 bytes"  # the one chunk's ciphertext
    assert fakes.staged.discarded and fakes.abandoned == ["hospital-2"]


def test_a_stream_closed_early_by_a_node_still_connected_is_malformed() -> None:
    context = Context(active_polls=None)
    fakes, details = _submit(iter([_chunk()]), context)
    assert fakes.refusals == ["malformed_chunk"]
    assert context.status == grpc.StatusCode.INVALID_ARGUMENT
    assert "must carry the stream's attestation" in details
    assert fakes.staged.discarded and fakes.abandoned == ["hospital-2"]


def test_a_stream_whose_iterator_raises_mid_way_is_broken() -> None:
    fakes, details = _submit(_then_broken(_chunk()), Context(active_polls=None))
    assert fakes.refusals == ["broken_stream"] and "broke off after" in details
    assert fakes.staged.discarded and fakes.abandoned == ["hospital-2"]


@pytest.mark.parametrize("chunks, active_polls", [(_then_broken(), None), (iter([]), 2)],
                         ids=["iterator raises", "ended, then cancelled"])
def test_a_stream_broken_before_its_first_chunk_is_broken(chunks: Iterator[Any], active_polls: int | None) -> None:
    context = Context(active_polls)
    fakes, details = _submit(chunks, context)
    assert fakes.refusals == ["broken_stream"] and details == "an upload stream broke off before its first chunk"
    assert context.status == grpc.StatusCode.CANCELLED
    assert fakes.abandoned == []  # no stream was begun


def test_an_empty_stream_from_a_connected_node_is_malformed() -> None:
    context = Context(active_polls=None)
    fakes, details = _submit(iter([]), context)
    assert fakes.refusals == ["malformed_chunk"] and details == "empty update stream"
    assert context.status == grpc.StatusCode.INVALID_ARGUMENT
