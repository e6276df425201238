"""`head` rounds through the real services: only the classifier head travels, the secure sum of those values is
exact, every other weight stays as it was, and the hospitals' epsilon is per patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.aggregator.checkpoint import load_latest_checkpoint
from services.common.ml.initial_weights import load_initial_weights
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.ml.trainable import trained_positions
from tests.e2e.consortium_checks import assert_exact_sums, node_fields, recording, run_to_completion, tiny_config
from tests.imagenet_weights import imagenet_style_resnet50

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


def test_imagenet_style_frozen_batchnorm_weights_train_their_head_and_a_hospital_without_dp_is_named(
        tmp_path: Path) -> None:
    """resnet50-bn-frozen from a torchvision-format file the test makes (nothing is downloaded): the file's BatchNorm
    statistics reach every hospital with the global model and stay as they are. One hospital turns record-level
    DP-SGD off, explicitly; every row names it."""
    weights = tmp_path / "resnet50-imagenet.pt"
    imagenet = imagenet_style_resnet50(weights)
    config = tiny_config(tmp_path, 3, 2, images_per_node=40, seed=9, hooks=recording(tmp_path),
                         settings={"architecture": "resnet50-bn-frozen", "image_size": 16, "min_participants": 3,
                                   "partition_scheme": "iid", "trainable": "head", "local_optimizer": "sgd",
                                   "learning_rate": 0.003, "local_epochs": 2, "clip_norm": 2.0},
                         aggregator={"record_epsilon": 8.0, "init_weights": weights},
                         per_node={2: {"record_dp": "off"}})
    consortium = run_to_completion(config)
    rows = [r for r in consortium.rows() if int(str(r["round"])) >= 1]
    assert [bool(r.get("failed")) for r in rows] == [False, False]
    assert all(r["record_dp_off"] == ["hospital-3"] for r in rows)
    assert sorted(rows[-1]["record_epsilon"]) == ["hospital-1", "hospital-2"]
    assert "record-level DP-SGD is OFF by this hospital's setting" in (consortium.logs / "hospital-3.log").read_text()
    model = build_model("resnet50-bn-frozen", 2, 0)
    load_initial_weights(model, weights)
    spec = parameter_spec(model.state_dict())
    head = trained_positions(model, spec, "head")
    for node in consortium.node_ids:
        assert node_fields(tmp_path / "records", node, 1).size == head.size
    assert_exact_sums(tmp_path, rows)
    final = load_latest_checkpoint(tmp_path / "aggregator" / "checkpoints")
    assert final is not None
    initial = flatten_state(model.state_dict())
    moved = np.flatnonzero(np.abs(final.weights - initial) > 0)
    assert moved.size and set(moved.tolist()) <= set(head.tolist())  # the frozen statistics are the file's still
    frozen = spec.positions("1.layer2.1.bn1.var")
    np.testing.assert_array_equal(final.weights[frozen], imagenet.layer2[1].bn1.running_var.double().numpy())
