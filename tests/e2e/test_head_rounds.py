"""`head` rounds through the real services: only the classifier head travels, the secure sum of those values is
exact, every other weight stays as it was, and the hospitals' epsilon is per patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.aggregator.checkpoint import load_latest_checkpoint
from services.common.model_spec import flatten_state, parameter_spec
from services.common.models import build_model
from services.common.trainable import trained_positions
from tests.e2e.consortium_checks import assert_exact_sums, node_fields, recording, run_to_completion, tiny_config

pytestmark = pytest.mark.e2e


def test_head_rounds_send_only_the_head_under_per_patient_dp_and_leave_the_backbone(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 2, images_per_node=40, seed=9, hooks=recording(tmp_path),
                         settings={"architecture": "tiny-gn", "min_participants": 3, "partition_scheme": "iid",
                                   "trainable": "head", "local_optimizer": "sgd", "learning_rate": 0.003,
                                   "local_epochs": 3, "clip_norm": 2.0},
                         aggregator={"record_epsilon": 8.0})
    consortium = run_to_completion(config)
    rows = [r for r in consortium.rows() if int(str(r["round"])) >= 1]
    assert [bool(r.get("failed")) for r in rows] == [False, False]
    model = build_model("tiny-gn", 2, 0)
    spec = parameter_spec(model.state_dict())
    head = trained_positions(model, spec, "head")
    # Each upload was the head's values only, and each decrypted sum is exactly its contributors' fields.
    for node in consortium.node_ids:
        fields = node_fields(tmp_path / "records", node, 1)
        assert fields.size == head.size < spec.count // 10  # the head's values, and nothing of the backbone
    assert_exact_sums(tmp_path, rows)
    # The model moved at the head's positions only.
    initial = flatten_state(model.state_dict())
    final = load_latest_checkpoint(tmp_path / "aggregator" / "checkpoints")
    assert final is not None
    moved = np.flatnonzero(np.abs(final.weights - initial) > 0)
    assert moved.size and set(moved.tolist()) <= set(head.tolist())
    # Per patient: the SYNTHETIC hospitals know their patients, and every row says so.
    assert all(r["record_epsilon_unit"] == "patient" for r in rows)
    assert 0 < float(str(rows[-1]["record_epsilon_max"])) <= 8.0
    logs = (consortium.logs / "hospital-1.log").read_text()
    assert "per patient" in logs and f"({head.size} values uploaded)" in logs
