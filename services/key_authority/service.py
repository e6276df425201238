"""The key authority process, once its settings are read (`services/key_authority/__main__.py`)."""

from __future__ import annotations

from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.service_runtime import (
    configure_logging,
    grpc_server,
    mark_serving,
    serve_metrics,
    shutdown_event,
)
from services.common.runtime.tls import add_port
from services.common.runtime.tracing import configure_tracing
from services.key_authority.config import KeyAuthoritySettings
from services.key_authority.decryption_policy import DecryptionLedger, DecryptionPolicy
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import load_or_create_keys
from services.key_authority.servicer import KeyAuthorityServicer


def serve(settings: KeyAuthoritySettings) -> None:
    log = configure_logging("key_authority", settings.log_level, settings.log_format == "json")
    configure_tracing("key_authority", settings.trace_file)
    try:
        keys = load_or_create_keys(settings.max_participants, settings.bits, settings.state_dir,
                                   settings.persist_secret_key)
    except (PermissionError, ValueError) as refused:  # a key readable by others, or made for other settings
        raise SystemExit(f"key authority: {refused}") from None
    ledger = DecryptionLedger(settings.state_dir / "decrypted_rounds.json")
    registry = NodeKeyRegistry.from_directory(settings.node_keys_dir)
    policy = DecryptionPolicy(keys, settings.min_participants, registry, ledger)
    metrics = ServiceMetrics("key_authority", holds_secret_key=keys.secret_context.is_private())
    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    server, health = grpc_server()
    decryption = DecryptionPool(keys.secret_context, settings.decryption_processes())
    servicer = KeyAuthorityServicer(keys, policy, settings.min_participants, metrics=metrics,
                                    node_agreement_keys=registry.agreement_keys,
                                    consortium=settings.consortium,
                                    require_aggregator_certificate=not settings.insecure,
                                    decryption=decryption)
    servicer.register(server)
    settings.warn_if_insecure("key authority")
    add_port(server, settings.listen, settings)
    server.start()
    mark_serving(health, "fedxray.v1.KeyAuthority")
    log.info("key authority serving on %s, key id %s, %d registered nodes, %d-bit fields x%d per slot",
             settings.listen, keys.key_id, len(registry.node_ids), keys.layout.bits, keys.layout.fields_per_slot)
    shutdown_event().wait()
    server.stop(grace=5).wait()
    decryption.close()
    log.info("key authority stopped")

