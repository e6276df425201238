"""Helpers the end-to-end tests share: reading what the processes left behind."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.consortium import Consortium, ConsortiumConfig


def run_to_completion(config: ConsortiumConfig, timeout: float = 420) -> Consortium:
    """Run a consortium to its end; it must exit cleanly (the aggregator's log tail says why not)."""
    with Consortium(config) as consortium:
        code = consortium.wait(timeout)
    assert code == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
    return consortium


def scrape(port: int) -> dict[str, float]:
    """Samples of a /metrics endpoint, name{labels} -> value."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def status(consortium: Consortium, service: str, as_member: str = "aggregator") -> pb.ServiceStatus:
    channel = consortium.channel_as(as_member, service)
    stub = pb_grpc.KeyAuthorityStub(channel) if service == "key_authority" else pb_grpc.AggregatorStub(channel)
    return stub.GetStatus(pb.GetStatusRequest(), timeout=10)


def node_fields(records: Path, node_id: str, round_id: int) -> np.ndarray:
    return np.load(records / f"{node_id}_round{round_id:04d}_fields.npy")


def node_update(records: Path, node_id: str, round_id: int) -> np.ndarray:
    return np.load(records / f"{node_id}_round{round_id:04d}_update.npy")


def round_plan(run_dir: Path, round_id: int) -> dict[str, object]:
    return json.loads((run_dir / "aggregator" / f"round_{round_id:04d}_plan.json").read_text())


def field_sum(run_dir: Path, round_id: int) -> np.ndarray:
    return np.load(run_dir / "aggregator" / f"round_{round_id:04d}_field_sum.npy")


def checkpoint_weights(run_dir: Path, round_id: int) -> np.ndarray:
    with np.load(run_dir / "aggregator" / "checkpoints" / f"round_{round_id:04d}.npz") as archive:
        return archive["weights"].astype(np.float64)


def checkpoint_control(run_dir: Path, round_id: int) -> np.ndarray:
    """The consortium's control variate after `round_id`, under drift correction."""
    with np.load(run_dir / "aggregator" / "checkpoints" / f"round_{round_id:04d}.npz") as archive:
        return archive["opt_control"].astype(np.float64)
