"""The aggregator's server limits, tried by a hostile client that opens upload streams and sends nothing.

Without mTLS (`insecure`, local development) the aggregator cannot tell who calls before a first chunk, so the
stream cap and the first-chunk deadline are what protect it, and this test tries them. With mTLS a stream's upload
slot is its participant's, taken when it starts: a non-participant's streams are refused at once
(tests/e2e/test_member_limits.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium
from tests.e2e.consortium_checks import scrape, tiny_config

pytestmark = pytest.mark.e2e

FIRST_CHUNK_SECONDS = 3.0
THREADS = 16  # so at most 12 calls at once
STREAMS = 4  # upload streams at once


def test_idle_upload_streams_are_cut_at_the_first_chunk_deadline_and_never_starve_the_server(
        tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 2, images_per_node=30, seed=8, extra_members=["intruder"], insecure=True,
                         aggregator={"first_chunk_seconds": FIRST_CHUNK_SECONDS, "server_threads": THREADS,
                                     "max_upload_streams": STREAMS,
                                     "linger_seconds": 600, "round_deadline_seconds": 120})
    hold = threading.Event()

    def nothing() -> Iterator[pb.UpdateChunk]:
        hold.wait(60)  # an upload stream that never sends a chunk
        return
        yield  # pragma: no cover

    with Consortium(config) as consortium:
        stub = pb_grpc.AggregatorStub(consortium.channel_as("intruder", "aggregator"))
        stub.GetStatus(pb.GetStatusRequest(), timeout=120, wait_for_ready=True)
        started = time.monotonic()
        calls = [stub.SubmitUpdate.future(nothing(), timeout=60) for _ in range(3 * THREADS)]
        time.sleep(0.5)
        # The flood holds every upload slot it got; short calls still find a thread.
        status = stub.GetStatus(pb.GetStatusRequest(), timeout=5)
        assert status.service == "aggregator"
        codes = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as ended:
                call.result(timeout=FIRST_CHUNK_SECONDS + 30)
            codes.append(ended.value.code())
        waited = time.monotonic() - started
        hold.set()
        code = consortium.wait(300)
        samples = scrape(consortium.services["aggregator"].metrics_port)
    assert code == 0
    # Beyond the limit: refused at once. Within it: cut at the deadline, never left to the client's own timeout.
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 3 * THREADS - STREAMS
    cut = [c for c in codes if c != grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert cut and set(cut) <= {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}
    assert waited < FIRST_CHUNK_SECONDS + 20
    assert samples.get('fedxray_refused_requests_total{reason="stream_deadline"}', 0) >= len(cut)
    rows = [r for r in consortium.rows() if int(str(r["round"])) > 0]
    assert len(rows) == 2
