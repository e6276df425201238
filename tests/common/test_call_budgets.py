"""The server's call budgets, on a real gRPC server over loopback: a flood of long calls that fills the services'
budget never starves the health check or the status call, and the call beyond the budget is refused at once."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.runtime.service_runtime import RESERVED_CALLS, grpc_server, mark_serving

pytestmark = pytest.mark.unit
WORK = 3


class Holding(pb_grpc.AggregatorServicer):
    """Subscriptions that hold their call until released; a status call that answers."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.holding = threading.Semaphore(0)

    def Subscribe(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> Iterator[pb.RoundMessage]:
        self.holding.release()
        self.release.wait(30)
        yield from ()

    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.ServiceStatus:
        return pb.ServiceStatus(service="aggregator")


def test_a_flood_that_fills_the_work_budget_never_starves_health_or_status() -> None:
    server, health = grpc_server(max_workers=WORK + RESERVED_CALLS)
    servicer = Holding()
    pb_grpc.add_AggregatorServicer_to_server(servicer, server)
    mark_serving(health)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.AggregatorStub(channel)
    floods = [stub.Subscribe(pb.JoinRequest(node_id=f"n{i}"), timeout=30) for i in range(WORK)]
    try:
        for _ in range(WORK):  # the whole work budget held
            assert servicer.holding.acquire(timeout=10)
        checker = health_pb2_grpc.HealthStub(channel)
        for _ in range(3 * RESERVED_CALLS):  # more than the reserved budget, one after another: each answers
            assert checker.Check(health_pb2.HealthCheckRequest(), timeout=5).status == \
                health_pb2.HealthCheckResponse.SERVING
            assert stub.GetStatus(pb.GetStatusRequest(), timeout=5).service == "aggregator"
        with pytest.raises(grpc.RpcError) as refused:
            next(stub.Subscribe(pb.JoinRequest(node_id="one-more"), timeout=10))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert f"limit of {WORK} calls" in (refused.value.details() or "")
    finally:
        servicer.release.set()
        for call in floods:
            list(call)
        channel.close()
        server.stop(grace=None)
