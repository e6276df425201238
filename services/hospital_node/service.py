"""The hospital node process, once its settings are read (`services/hospital_node/__main__.py`)."""

from __future__ import annotations

import threading

import torch

from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.service_runtime import configure_logging, serve_metrics, shutdown_event
from services.common.runtime.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME, channel
from services.common.runtime.tracing import configure_tracing
from services.hospital_node.config import DataSettings, HospitalNodeSettings
from services.hospital_node.consortium_client import ConsortiumClient
from services.hospital_node.data.image_loaders import DatasetFormatError
from services.hospital_node.data.local_data import load_local_data
from services.hospital_node.node_loop import HospitalNode, UploadObserver
from services.hospital_node.private_training import PrivateTrainingError


def serve(settings: HospitalNodeSettings, observer: UploadObserver | None = None) -> int:
    """`observer` is for tests only (tests/service_hooks); the command line never sets it."""
    log = configure_logging(settings.node_id, settings.log_level, settings.log_format == "json")
    configure_tracing(settings.node_id, settings.trace_file)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    metrics = ServiceMetrics("hospital_node", holds_secret_key=False)
    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    try:
        data = load_local_data(DataSettings.of(settings))
    except DatasetFormatError as error:
        log.error("cannot load this hospital's images: %s", error)
        return 2
    settings.warn_if_insecure(settings.node_id)
    client = ConsortiumClient(channel(settings.aggregator, settings, AGGREGATOR_NAME),
                              channel(settings.key_authority, settings, KEY_AUTHORITY_NAME))
    try:
        node = HospitalNode(settings, data, metrics, client=client, observer=observer)
    except PrivateTrainingError as error:
        log.error("cannot train under record-level DP-SGD: %s", error)
        return 2
    except FileNotFoundError as error:
        log.error("cannot read this hospital's key file %s: make its keys with `python -m services.hospital_node "
                  "keygen --out %s --node-id %s` (FEDXRAY_NODE_IDENTITY_KEY names the private one)", error.filename,
                  settings.identity_key.parent, settings.node_id)
        return 2
    stop = shutdown_event()
    result: list[int] = []
    worker = threading.Thread(target=lambda: result.append(node.run(stop)), name="node", daemon=True)
    worker.start()
    while worker.is_alive() and not stop.is_set():
        worker.join(0.5)
    if stop.is_set():
        log.info("stopping on signal")
        return 0
    return result[0] if result else 1

