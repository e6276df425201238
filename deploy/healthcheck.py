"""Container health check: is this container's FedXray service up and answering?

`python /app/deploy/healthcheck.py` (the image's HEALTHCHECK) finds the service
this container runs (`python -m services.<name> [--config FILE]` among its
processes), loads its settings the way the service did (`load_settings`: the
same environment and env file), and then:

- key authority, aggregator: asks the standard gRPC health service on the
  service's own port, over mTLS with the service's own certificate (any
  certificate of the consortium CA may ask for health), and passes only on
  SERVING;
- hospital node: it serves no gRPC, so it fetches its Prometheus /metrics
  endpoint; with no metrics port, a running node process passes.

Exit 0: healthy; exit 1: not (Docker's HEALTHCHECK convention).
"""

from __future__ import annotations

import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository (or /app) root

SERVICES = ("key_authority", "aggregator", "hospital_node")
TIMEOUT_SECONDS = 4.0


def running_service() -> tuple[str, list[str]] | None:
    """(service name, the arguments after `-m services.<name>`) of the FedXray process here."""
    for cmdline_file in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = [arg.decode() for arg in cmdline_file.read_bytes().split(b"\0") if arg]
        except OSError:
            continue
        for name in SERVICES:
            if f"services.{name}" in argv:
                return name, argv[argv.index(f"services.{name}") + 1:]
    return None


def local_address(listen: str) -> str:
    """The address to reach a server listening on `listen` from inside its own host."""
    host, _, port = listen.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def grpc_serving(listen: str, settings: object, server_name: str) -> bool:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.common.runtime.tls import channel

    with channel(local_address(listen), settings, server_name) as grpc_channel:  # type: ignore[arg-type]
        stub = health_pb2_grpc.HealthStub(grpc_channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=TIMEOUT_SECONDS)
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def metrics_answer(host: str, port: int) -> bool:
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=TIMEOUT_SECONDS) as reply:
        return bool(reply.status == 200)


def healthy() -> bool:
    found = running_service()
    if found is None:
        print("no FedXray service process in this container", file=sys.stderr)
        return False
    name, arguments = found
    # The service's own loader: the same environment and --config file it started with.
    from services.common.runtime.settings_loader import load_settings
    from services.common.runtime.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME

    if name == "key_authority":
        from services.key_authority.config import KeyAuthoritySettings

        ka = load_settings(KeyAuthoritySettings, "services.key_authority", None, argv=arguments)
        return grpc_serving(ka.listen, ka, KEY_AUTHORITY_NAME)
    if name == "aggregator":
        from services.aggregator.config import AggregatorSettings

        aggregator = load_settings(AggregatorSettings, "services.aggregator", None, argv=arguments)
        return grpc_serving(aggregator.listen, aggregator, AGGREGATOR_NAME)
    from services.hospital_node.config import HospitalNodeSettings

    node = load_settings(HospitalNodeSettings, "services.hospital_node", None, argv=arguments)
    return metrics_answer(node.metrics_host, node.metrics_port) if node.metrics_port else True


def main() -> int:
    try:
        return 0 if healthy() else 1
    except (Exception, SystemExit) as error:  # any failure to ask is "unhealthy" (exit 1, never 2: reserved)
        import grpc

        detail = f"{error.code().name}: {error.details()}" if isinstance(error, grpc.RpcError) else str(error)
        print(f"unhealthy: {type(error).__name__}: {' '.join(detail.split())}", file=sys.stderr)  # one line
        return 1


if __name__ == "__main__":
    sys.exit(main())
