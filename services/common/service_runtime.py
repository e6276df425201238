"""What every service process does the same way: logs, metrics endpoint, SIGTERM, gRPC server."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from services.common.metrics import ServiceMetrics
from services.common.tls import GRPC_MESSAGE_LIMIT, GRPC_OPTIONS



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


def grpc_server(max_workers: int = 32, max_concurrent_rpcs: int | None = None,
                max_receive_bytes: int = GRPC_MESSAGE_LIMIT) -> tuple[grpc.Server, health.HealthServicer]:
    """A gRPC server of `max_workers` threads. Beyond `max_concurrent_rpcs` calls at once (default: the workers less
    4), a call is refused at once with RESOURCE_EXHAUSTED instead of queueing for a thread. The aggregator also caps
    its upload streams well below this, so that subscriptions and short calls (GetStatus, health) find a slot. A
    message over `max_receive_bytes` is refused with RESOURCE_EXHAUSTED."""
    limit = max_concurrent_rpcs if max_concurrent_rpcs is not None else max(1, max_workers - 4)
    options = [(name, value) for name, value in GRPC_OPTIONS if name != "grpc.max_receive_message_length"]
    options.append(("grpc.max_receive_message_length", max_receive_bytes))
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers), options=options + KEEPALIVE_OPTIONS,
                         maximum_concurrent_rpcs=limit)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    return server, health_servicer


def mark_serving(health_servicer: health.HealthServicer, *names: str) -> None:
    for name in ("", *names):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)

