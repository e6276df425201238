"""One member against the aggregator's capacity, with the real services: a registered member ("mallory", with a
certificate of its own and no node process) floods Subscribe calls and opens idle upload streams while rounds run.
Each member holds one live subscription (a new one replaces the old at most once a second) and upload slots belong
to the open attempt's participants, taken when a stream starts. The rounds must complete with every honest
participant, and the status call must answer throughout; the test fails if the flood stalls either. (Mallory's one
live subscription makes it a member connected when round 2 opens: that attempt waits for it until its deadline, and
the next attempt goes on without it, as with any member that joins and never uploads.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium
from services.common.ml.model_spec import parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.wire import join_to_wire
from services.hospital_node.data.synthetic_xray import BINARY_CLASS_NAMES
from tests.e2e.consortium_checks import tiny_config

pytestmark = pytest.mark.e2e
ROUNDS = 2


def _wait_for(path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} did not appear in {path}")


def test_a_subscribe_flood_and_48_idle_upload_streams_leave_the_rounds_to_the_honest_members(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, ROUNDS, seed=5, extra_members=["mallory"],
                         settings={"local_epochs": 40, "min_participants": 3, "round_deadline_seconds": 30.0},
                         # 12 calls at once: room for the honest members' subscriptions, uploads and status calls,
                         # not for the flood (before these limits, 9 subscriptions starved GetStatus and Health).
                         aggregator={"server_threads": 16})
    spec = parameter_spec(build_model("tiny", 2, 0).state_dict())
    with Consortium(config) as consortium:
        _wait_for(consortium.logs / "aggregator.log", "round 1 attempt 1 opened")
        stub = pb_grpc.AggregatorStub(consortium.channel_as("mallory", "aggregator"))
        join = join_to_wire("mallory", spec, ClassRoster(BINARY_CLASS_NAMES, (10, 10)))
        codes: dict[str, list[grpc.StatusCode]] = {"subscribe": [], "upload": [], "status": []}
        lock = threading.Lock()

        def record(kind: str, call: Callable[[], object]) -> None:
            """Make the call and keep the status it ended with."""
            try:
                call()
                code = grpc.StatusCode.OK
            except grpc.RpcError as error:
                code = error.code()
            with lock:
                codes[kind].append(code)

        def subscribe() -> None:
            record("subscribe", lambda: list(stub.Subscribe(join, timeout=20)))

        def idle_upload() -> None:
            never = threading.Event()

            def chunks():  # type: ignore[no-untyped-def]
                never.wait(40)  # never sends a first chunk
                yield from ()

            record("upload", lambda: stub.SubmitUpdate(chunks(), timeout=45))

        def status() -> None:
            for _ in range(10):
                record("status", lambda: stub.GetStatus(pb.GetStatusRequest(), timeout=5))
                time.sleep(0.5)

        with futures.ThreadPoolExecutor(max_workers=64) as pool:
            jobs = ([pool.submit(subscribe) for _ in range(9)] + [pool.submit(idle_upload) for _ in range(48)]
                    + [pool.submit(status)])
            assert consortium.wait(420) == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
            for job in jobs:
                job.result(timeout=120)
        rows = {int(r["round"]): r for r in consortium.rows()}
    for round_id in range(1, ROUNDS + 1):
        assert not rows[round_id].get("failed"), rows[round_id]
        assert rows[round_id]["participants"] == 3
    # The flood was refused at once: one live subscription at most, and no upload slot for a non-participant.
    assert codes["subscribe"].count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 8
    # Every idle stream was refused when it started (no slot: FAILED_PRECONDITION; or the server's call limit while
    # the flood lasted), none held on until the first-chunk deadline.
    assert len(codes["upload"]) == 48 and grpc.StatusCode.FAILED_PRECONDITION in codes["upload"]
    assert set(codes["upload"]) <= {grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert codes["status"] == [grpc.StatusCode.OK] * 10
