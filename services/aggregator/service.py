"""The aggregator process, once its settings are read (`services/aggregator/__main__.py`)."""

from __future__ import annotations

import threading

from services.aggregator.config import AggregatorSettings
from services.aggregator.evaluation_board import EvaluationBoard
from services.aggregator.key_authority_client import KeyAuthorityClient
from services.aggregator.membership import Membership
from services.aggregator.privacy_accountant import SkellamAccountant
from services.aggregator.privacy_budget import PrivacyBudgetGuard
from services.aggregator.round_loop import DecryptionObserver, RoundLoop, RoundParts
from services.aggregator.run_state import RunState
from services.aggregator.servicer import AggregatorServicer
from services.aggregator.strategies.factory import build_strategy
from services.aggregator.strategies.head_refit import HeadRefit
from services.aggregator.upload_intake import UploadIntake
from services.common.ml.head_refit import head_positions
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.ml.trainable import trained_positions
from services.common.protocol.class_roster import class_counts_document
from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.protocol.upload import upload_message_limit
from services.common.runtime.atomic_files import write_json_atomic
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.service_runtime import (
    configure_logging,
    grpc_server,
    mark_serving,
    serve_metrics,
    shutdown_event,
)
from services.common.runtime.tls import KEY_AUTHORITY_NAME, add_port, channel
from services.common.runtime.tracing import configure_tracing


def serve(settings: AggregatorSettings, observer: DecryptionObserver | None = None) -> int:
    """`observer` is for tests only (tests/service_hooks); the command line never sets it."""
    log = configure_logging("aggregator", settings.log_level, settings.log_format == "json")
    configure_tracing("aggregator", settings.trace_file)
    members = NodeKeyRegistry.from_directory(settings.node_keys_dir).node_ids
    if settings.class_names is None and len(members) > 1:
        log.error("no class names configured for a consortium of %d hospitals: set FEDXRAY_AGG_CLASS_NAMES to the "
                  "classes in label order, as every hospital names its folders (for example NORMAL,PNEUMONIA); "
                  "without it the first hospital to join would decide them for all", len(members))
        return 2
    metrics = ServiceMetrics("aggregator", holds_secret_key=False)
    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
    if settings.init_weights is not None:
        load_initial_weights(model, settings.init_weights)
        log.info("starting from the weights in %s", settings.init_weights)
    spec = parameter_spec(model.state_dict())
    registry = NodeKeyRegistry.from_directory(settings.node_keys_dir)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    counts_path = settings.state_dir / "class_counts.json"
    membership = Membership(registry.node_ids, spec, settings.class_names,
                            on_join=lambda rosters: write_json_atomic(counts_path, class_counts_document(rosters)))
    intake = UploadIntake(settings.state_dir / "staging", registry.node_ids, metrics)
    board = EvaluationBoard(settings.num_classes, settings.state_dir / "rounds.jsonl", metrics)
    strategy = build_strategy(settings, spec.count, trained_positions(model, spec, settings.trainable))
    # A restart goes on from the last checkpoint: the model, the strategy's state, the privacy spent, the counters.
    run = (RunState.restore(settings.state_dir / "checkpoints", strategy, settings.delta)
           or RunState(flatten_state(model.state_dict()), strategy, SkellamAccountant(delta=settings.delta)))
    if run.weights.size != spec.count:
        raise SystemExit(f"the checkpoint in {settings.state_dir / 'checkpoints'} holds {run.weights.size} weights; "
                         f"{settings.architecture} has {spec.count}: another run's state directory?")
    run.keep_checkpoints = settings.keep_checkpoints
    accountant = run.accountant
    parts = RoundParts(membership, intake, board,
                       PrivacyBudgetGuard(accountant, settings.epsilon_budget, settings.min_participants,
                                          settings.secure),
                       run, HeadRefit(head_positions(model, spec), settings.head_refit_shrinkage))
    key_authority = KeyAuthorityClient(channel(settings.key_authority, settings, KEY_AUTHORITY_NAME))
    loop = RoundLoop(settings, metrics, key_authority, parts=parts, observer=observer)
    message_limit = upload_message_limit(settings.chunk_ciphertexts, settings.plaintext_chunk_values)
    server, health = grpc_server(settings.server_threads, max_receive_bytes=message_limit)
    servicer = AggregatorServicer(loop, membership, intake, board=board, registry=registry, metrics=metrics,
                                  check_peer=not settings.insecure,
                                  close_grace_seconds=settings.stream_close_grace_seconds,
                                  first_chunk_seconds=settings.first_chunk_seconds,
                                  stream_seconds=settings.upload_stream_seconds,
                                  max_streams=settings.max_upload_streams or 2 * len(registry.node_ids))
    servicer.register(server)
    settings.warn_if_insecure("aggregator")
    add_port(server, settings.listen, settings)
    server.start()
    mark_serving(health, "fedxray.v1.Aggregator")
    log.info("aggregator serving on %s (%s mode, %d rounds, %s; messages up to %d bytes)", settings.listen,
             "secure" if settings.secure else "PLAINTEXT", settings.rounds, settings.architecture, message_limit)
    stop = shutdown_event()
    thread = threading.Thread(target=loop.run, args=(stop,), name="round-loop", daemon=True)
    thread.start()
    while not stop.is_set() and not loop.finished.is_set():
        stop.wait(0.5)
    if settings.linger_seconds and not stop.is_set():
        log.info("training finished; serving status and metrics for %.0f s more", settings.linger_seconds)
        stop.wait(settings.linger_seconds)
    # Let subscribers receive the final message before the server goes.
    server.stop(grace=5).wait()
    log.info("aggregator stopped")
    return 1 if loop.failed else 0

