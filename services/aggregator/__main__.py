"""Run the aggregator: `python -m services.aggregator [--config FILE]`.

Settings come from FEDXRAY_AGG_* environment variables or an env file; `--help`
lists them.
"""

from __future__ import annotations

import sys
import threading

from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.aggregator.config import AggregatorSettings
from services.aggregator.key_authority_client import KeyAuthorityClient
from services.aggregator.round_loop import Coordinator
from services.aggregator.servicer import AggregatorServicer
from services.common.metrics import ServiceMetrics
from services.common.model_spec import flatten_state, parameter_spec
from services.common.head_refit import head_positions
from services.common.models import build_model
from services.common.service_runtime import (
    load_settings,
    configure_logging,
    grpc_server,
    mark_serving,
    serve_metrics,
    shutdown_event,
)
from services.common.stream_digest import NodeKeyRegistry
from services.common.tls import KEY_AUTHORITY_NAME, add_port, channel


def main(argv: list[str] | None = None) -> int:
    settings = load_settings(AggregatorSettings, "services.aggregator", __doc__, argv)
    log = configure_logging("aggregator", settings.log_level)
    metrics = ServiceMetrics("aggregator", holds_secret_key=False)
    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
    state = model.state_dict()
    spec = parameter_spec(state)
    registry = NodeKeyRegistry.from_directory(settings.node_keys_dir)
    coordinator = Coordinator(settings, metrics, KeyAuthorityClient(channel(settings.key_authority, settings, KEY_AUTHORITY_NAME)),
                              registry, spec, flatten_state(state), head_positions(model, spec))
    server, health = grpc_server()
    servicer = AggregatorServicer(coordinator, registry, metrics, check_peer=not settings.insecure,
                                  close_grace_seconds=settings.stream_close_grace_seconds)
    pb_grpc.add_AggregatorServicer_to_server(servicer, server)
    settings.warn_if_insecure("aggregator")
    add_port(server, settings.listen, settings)
    server.start()
    mark_serving(health, "fedxray.v1.Aggregator")
    log.info("aggregator serving on %s (%s mode, %d rounds, %s)", settings.listen,
             "secure" if settings.secure else "PLAINTEXT", settings.rounds, settings.architecture)
    stop = shutdown_event()
    loop = threading.Thread(target=coordinator.run, args=(stop,), name="round-loop", daemon=True)
    loop.start()
    while not stop.is_set() and not coordinator.finished.is_set():
        stop.wait(0.5)
    if settings.linger_seconds and not stop.is_set():
        log.info("training finished; serving status and metrics for %.0f s more", settings.linger_seconds)
        stop.wait(settings.linger_seconds)
    # Let subscribers receive the final message before the server goes.
    server.stop(grace=5).wait()
    log.info("aggregator stopped")
    return 1 if coordinator.failed else 0


if __name__ == "__main__":
    sys.exit(main())
