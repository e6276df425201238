"""Helpers the end-to-end tests share: reading what the processes left behind."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import QUICK_TRAINING, Consortium, ConsortiumConfig, SettingValues
from tests.service_hooks.hooks import TestHooks, hooked

# What every end-to-end consortium runs: the tiny model at 32 px, Dirichlet label skew, one training thread and
# in-process encryption per node, so that five nodes share two cores; one SGD epoch a round, no head refit
# (QUICK_TRAINING: these tests are of the protocol, not of learning).
TINY: SettingValues = {"architecture": "tiny", "image_size": 32, "partition_scheme": "dirichlet",
                       "encryption_workers": 0, "torch_threads": 1,
                       # Test hospitals validate on a handful of SYNTHETIC images; the floor has tests of its own.
                       "min_validation_images": 0,
                       # The tests compare the rounds' models: every round's checkpoint stays.
                       "keep_checkpoints": 0, **QUICK_TRAINING}


def tiny_config(run_dir: Path, nodes: int, rounds: int, *, images_per_node: int = 40, seed: int | None = None,
                hooks: TestHooks | None = None, settings: SettingValues | None = None,
                **config: Any) -> ConsortiumConfig:
    """A test consortium of the tiny model; `hooks` runs the hooked entry points (records, faults)."""
    return ConsortiumConfig(run_dir=run_dir, nodes=nodes, images_per_node=images_per_node, seed=seed,
                            settings={**TINY, "rounds": rounds, **(settings or {})},
                            **(hooked(hooks) if hooks is not None else {}), **config)


def recording(run_dir: Path, **faults: Any) -> TestHooks:
    """Hooks that record every upload and decrypted sum under `run_dir/records`."""
    return TestHooks(record_dir=run_dir / "records", **faults)


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
    return json.loads((run_dir / "records" / f"round_{round_id:04d}_plan.json").read_text())


def field_sum(run_dir: Path, round_id: int) -> np.ndarray:
    return np.load(run_dir / "records" / f"round_{round_id:04d}_field_sum.npy")


def checkpoint_weights(run_dir: Path, round_id: int) -> np.ndarray:
    with np.load(run_dir / "aggregator" / "checkpoints" / f"round_{round_id:04d}.npz") as archive:
        return archive["weights"].astype(np.float64)


def checkpoint_control(run_dir: Path, round_id: int) -> np.ndarray:
    """The consortium's control variate after `round_id`, under drift correction."""
    with np.load(run_dir / "aggregator" / "checkpoints" / f"round_{round_id:04d}.npz") as archive:
        return archive["opt_control"].astype(np.float64)


def assert_exact_sums(run_dir: Path, rows: list[dict[str, object]], bits: int = 10) -> None:
    """Every applied round's decrypted sum is exactly the sum of its contributors' recorded fields, mod 2^bits (10:
    the field width of the default n_max, 8)."""
    records = run_dir / "records"
    for row in rows:
        round_id = int(str(row["round"]))
        if round_id == 0 or row.get("failed"):
            continue
        contributors = [str(c) for c in row["contributors"]]  # type: ignore[attr-defined]
        expected = np.sum([node_fields(records, node, round_id) for node in contributors], axis=0) % (1 << bits)
        assert np.array_equal(field_sum(run_dir, round_id), expected), f"round {round_id}"
