"""Run a hospital node: `python -m services.hospital_node [--config FILE]`.

Settings come from FEDXRAY_NODE_* environment variables or an env file; `--help`
lists them. `python -m services.hospital_node keygen --out DIR --node-id ID`
makes the node's Ed25519 identity key (ID.key, mode 0600) and its public half.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

import torch

from services.common.metrics import ServiceMetrics
from services.common.service_runtime import configure_logging, load_settings, serve_metrics, shutdown_event
from services.common.node_identity import generate_identity
from services.common.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME, channel
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.consortium_client import ConsortiumClient
from services.hospital_node.data.image_loaders import DatasetFormatError
from services.hospital_node.data.local_data import load_local_data
from services.hospital_node.node_loop import HospitalNode, UploadObserver
from services.hospital_node.private_training import PrivateTrainingError


def main(argv: list[str] | None = None, observer: UploadObserver | None = None) -> int:
    """`observer` is for tests only (tests/service_hooks); the command line never sets it."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["keygen"]:
        keygen = argparse.ArgumentParser(prog="python -m services.hospital_node keygen")
        keygen.add_argument("--out", type=Path, required=True)
        keygen.add_argument("--node-id", required=True)
        parsed = keygen.parse_args(argv[1:])
        print(generate_identity(parsed.out, parsed.node_id))
        return 0
    settings = load_settings(HospitalNodeSettings, "services.hospital_node", __doc__, argv)
    log = configure_logging(settings.node_id, settings.log_level)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    metrics = ServiceMetrics("hospital_node", holds_secret_key=False)
    serve_metrics(metrics, settings.metrics_host, settings.metrics_port)
    try:
        data = load_local_data(settings)
    except DatasetFormatError as error:
        log.error("cannot load this hospital's images: %s", error)
        return 2
    settings.warn_if_insecure(settings.node_id)
    client = ConsortiumClient(channel(settings.aggregator, settings, AGGREGATOR_NAME),
                              channel(settings.key_authority, settings, KEY_AUTHORITY_NAME))
    try:
        node = HospitalNode(settings, data, metrics, client, observer)
    except PrivateTrainingError as error:
        log.error("cannot train under record-level DP-SGD: %s", error)
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


if __name__ == "__main__":
    sys.exit(main())
