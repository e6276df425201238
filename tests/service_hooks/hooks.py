"""What the test entry points record or break, configured by FEDXRAY_TEST_* variables."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from scripts.settings_env import settings_env
from services.common.protocol.round_plan import RoundPlan
from services.common.runtime.atomic_files import atomic_writer, write_json_atomic

HOOKED_MODULES = {"aggregator": "tests.service_hooks.aggregator", "hospital_node": "tests.service_hooks.hospital_node"}


class TestHooks(BaseSettings):
    __test__ = False  # not a test class, whatever its name
    model_config = SettingsConfigDict(env_prefix="FEDXRAY_TEST_", extra="forbid")

    record_dir: Path | None = Field(None, description="write each decrypted sum, and each node's upload and encoding")
    fault_exit_after_chunks: int | None = Field(None, description="a node dies mid-upload after this many chunks")
    fault_round: int = Field(1, description="the round in which it dies")
    fault_node: str | None = Field(None, description="the node that dies; None: every node")


def hooked(hooks: TestHooks) -> dict[str, object]:
    """`ConsortiumConfig` arguments that run the hooked entry points with `hooks`."""
    return {"modules": HOOKED_MODULES, "hook_env": settings_env(hooks)}


def record_decrypted_sum(record_dir: Path, plan: RoundPlan, field_sums: np.ndarray, contributors: list[str]) -> None:
    with atomic_writer(record_dir / f"round_{plan.round_id:04d}_field_sum.npy") as handle:
        np.save(handle, field_sums)
    q = plan.quantization
    write_json_atomic(record_dir / f"round_{plan.round_id:04d}_plan.json", {
        "scale": q.scale, "bits": q.bits, "participants": len(contributors), "coordinate_bound": q.coordinate_bound,
        "noise_kind": str(q.noise_kind), "node_noise_variance": q.node_noise_variance, "contributors": contributors})


class NodeRecorder:
    """The node's `UploadObserver`: records each upload, and dies after the configured chunk if asked."""

    # gRPC has accepted the sent chunks but may not have put them on the wire yet; without a wait before dying
    # the aggregator might receive none, and the test would not show a death mid-upload.
    FLUSH_SECONDS = 1.0

    def __init__(self, hooks: TestHooks) -> None:
        self._hooks = hooks
        self.keeps_fields = hooks.record_dir is not None

    def chunk_sent(self, node_id: str, round_id: int, sent: int) -> None:
        h = self._hooks
        if (h.fault_exit_after_chunks is not None and h.fault_node in (None, node_id) and round_id == h.fault_round
                and sent >= h.fault_exit_after_chunks):
            time.sleep(self.FLUSH_SECONDS)
            os._exit(17)

    def uploaded(self, node_id: str, round_id: int, update: np.ndarray, fields: np.ndarray | None) -> None:
        record_dir = self._hooks.record_dir
        if record_dir is None:
            return
        stem = record_dir / f"{node_id}_round{round_id:04d}"
        with atomic_writer(stem.with_name(stem.name + "_update.npy")) as handle:
            np.save(handle, update)
        if fields is not None:
            with atomic_writer(stem.with_name(stem.name + "_fields.npy")) as handle:
                np.save(handle, fields)
