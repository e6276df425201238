"""What every service process does the same way: logs, metrics endpoint, SIGTERM, gRPC server."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.tls import GRPC_MESSAGE_LIMIT, GRPC_OPTIONS


class JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(service: str, level: str = "INFO", json_logs: bool = True) -> logging.Logger:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLogFormatter() if json_logs else logging.Formatter(
        f"%(asctime)s {service} %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    return logging.getLogger(service)


def serve_metrics(metrics: ServiceMetrics, host: str, port: int) -> None:
    if port:
        start_http_server(port, addr=host, registry=metrics.registry)


def shutdown_event() -> threading.Event:
    """Set on SIGTERM or SIGINT, so the main loop can stop gracefully."""
    stop = threading.Event()

    def handle(signum: int, _frame: object) -> None:
        logging.getLogger("runtime").info("signal %d received: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    return stop


# The server pings an idle connection every 60 s and drops it when no answer comes within 20 s: a peer that vanished
# without closing (a cut network, a killed host) frees its streams and threads.
KEEPALIVE_OPTIONS = [("grpc.keepalive_time_ms", 60_000), ("grpc.keepalive_timeout_ms", 20_000),
                     ("grpc.keepalive_permit_without_calls", 1)]


# Calls no flood may starve: the health checks and each service's status call. They have a budget of their own.
RESERVED_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
                              "/fedxray.v1.Aggregator/GetStatus", "/fedxray.v1.KeyAuthority/GetStatus"})
RESERVED_CALLS = 4


class CallBudgets(grpc.ServerInterceptor):  # type: ignore[misc]
    """Two budgets of calls at once: `work` for the services' own calls, `reserved` for health and status. A call
    beyond its budget is refused at once with RESOURCE_EXHAUSTED, naming the budget, instead of queueing for a thread;
    with a thread for every call either budget admits, a flood of work calls never delays a health check."""

    def __init__(self, work: int, reserved: int = RESERVED_CALLS) -> None:
        self._budgets = {False: (threading.BoundedSemaphore(work), f"{work} calls"),
                         True: (threading.BoundedSemaphore(reserved), f"{reserved} health and status calls")}

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
                          details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = continuation(details)
        if handler is None:
            return None
        budget, what = self._budgets[details.method in RESERVED_METHODS]
        return _within(handler, budget, what)


def _within(handler: grpc.RpcMethodHandler, budget: threading.BoundedSemaphore, what: str) -> grpc.RpcMethodHandler:
    """`handler`, run only while `budget` has room (released when the call ends, a stream's too)."""

    def admit(context: grpc.ServicerContext) -> None:
        if not budget.acquire(blocking=False):
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"the server is at its limit of {what} at once; try "
                          "again shortly")

    def single(behaviour: Callable[[Any, grpc.ServicerContext], Any]) -> Callable[[Any, grpc.ServicerContext], Any]:
        def run(request: Any, context: grpc.ServicerContext) -> Any:
            admit(context)
            try:
                return behaviour(request, context)
            finally:
                budget.release()
        return run

    def streamed(behaviour: Callable[[Any, grpc.ServicerContext], Iterator[Any]]
                 ) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
        def run(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            admit(context)
            try:
                yield from behaviour(request, context)
            finally:
                budget.release()
        return run

    codecs = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(single(handler.unary_unary), *codecs)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(single(handler.stream_unary), *codecs)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streamed(handler.unary_stream), *codecs)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streamed(handler.stream_stream), *codecs)


def grpc_server(max_workers: int = 32, max_concurrent_rpcs: int | None = None,
                max_receive_bytes: int = GRPC_MESSAGE_LIMIT) -> tuple[grpc.Server, health.HealthServicer]:
    """A gRPC server of `max_workers` threads: at most `max_concurrent_rpcs` of the services' calls at once (default:
    the workers less RESERVED_CALLS), and RESERVED_CALLS health and status calls beside them, each on a thread of its
    own (`CallBudgets`). The aggregator also caps its upload streams well below this. A message over
    `max_receive_bytes` is refused with RESOURCE_EXHAUSTED."""
    work = max_concurrent_rpcs if max_concurrent_rpcs is not None else max(1, max_workers - RESERVED_CALLS)
    options = [(name, value) for name, value in GRPC_OPTIONS if name != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_bytes))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=work + RESERVED_CALLS),
                         interceptors=[CallBudgets(work)], options=options + KEEPALIVE_OPTIONS)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def mark_serving(health_servicer: health.HealthServicer, *names: str) -> None:
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

