"""Drift correction (SCAFFOLD) through the real services: three hospitals, two secure rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scripts.centralized import node_settings_for
from scripts.consortium import ConsortiumConfig
from scripts.privacy_cost import Setting, cost
from services.common.ckks_params import ckks_parameters, field_layout
from services.common.model_spec import flatten_named, parameter_spec, restore_state
from services.common.models import build_model
from services.common.quantize import scale_and_clamp
from services.hospital_node.local_data import load_local_data
from services.hospital_node.trainer import LocalTraining, loss_gradient
from tests.e2e.consortium_checks import (
    checkpoint_control,
    checkpoint_weights,
    field_sum,
    node_update,
    round_plan,
    run_to_completion,
)

NODES, ROUNDS = 3, 2


def _centered(values: np.ndarray, bits: int) -> np.ndarray:
    half = 1 << (bits - 1)
    return ((values.astype(np.int64) + half) % (1 << bits)) - half


def test_uploads_carry_the_control_variate_change_and_the_aggregator_applies_both_halves(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = ConsortiumConfig(run_dir=tmp_path, nodes=NODES, rounds=ROUNDS, architecture="tiny", image_size=32,
                              images_per_node=40, seed=5, record=True, clip_norm=5.0, noise_variance=12.0,
                              partition_scheme="label_mix", drift_correction=True)
    consortium = run_to_completion(config)
    rows = [r for r in consortium.rows() if r["round"] >= 1]
    assert [(r["round"], r["participants"]) for r in rows] == [(1, NODES), (2, NODES)]
    count = parameter_spec(build_model("tiny", 2, 0).state_dict()).count
    # The accountant's epsilon is that of uploads twice the model's length under the one clip norm.
    default_field = field_layout(ckks_parameters(config.max_participants), config.max_participants)

    def epsilon(values: int) -> float:
        setting = Setting(values, config.clip_norm, ROUNDS, 1e-5, NODES, config.min_participants,
                          config.max_participants)
        return cost(setting, default_field, config.noise_variance).epsilon

    assert rows[-1]["epsilon"] == pytest.approx(epsilon(2 * count), rel=1e-9)
    assert epsilon(2 * count) > 1.5 * epsilon(count)
    records = tmp_path / "records"
    assert np.all(checkpoint_control(tmp_path, 0) == 0)
    sent: dict[str, list[np.ndarray]] = {node: [] for node in consortium.node_ids}
    for round_id in range(1, ROUNDS + 1):
        uploads = [node_update(records, node, round_id) for node in consortium.node_ids]
        # Each upload is the update followed by the change in that hospital's control variate.
        assert all(u.shape == (2 * count,) for u in uploads)
        assert all(np.linalg.norm(u[count:]) > 0 for u in uploads)
        plan = round_plan(tmp_path, round_id)
        n, scale, bits = int(plan["participants"]), float(plan["scale"]), int(plan["bits"])
        decoded = _centered(field_sum(tmp_path, round_id), bits) / (n * scale)
        assert decoded.shape == (2 * count,)
        # Clipped as one vector, so the clip covers both halves; then clamped per coordinate like an update.
        clipped = [scale_and_clamp(u, config.clip_norm, scale, int(plan["coordinate_bound"])) / scale
                   for u in uploads]
        for node, values in zip(consortium.node_ids, clipped):
            sent[node].append(values[count:])
        sigma = math.sqrt(n / 4 + n * float(plan["node_noise_variance"])) / (n * scale)
        assert np.max(np.abs(decoded - np.mean(clipped, axis=0))) < 7 * sigma
        # FedAvg moves the model by the first half; SCAFFOLD's c moves by the participants' share of the second.
        np.testing.assert_allclose(checkpoint_weights(tmp_path, round_id),
                                   checkpoint_weights(tmp_path, round_id - 1) + decoded[:count], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(checkpoint_control(tmp_path, round_id),
                                   checkpoint_control(tmp_path, round_id - 1) + n / NODES * decoded[count:],
                                   rtol=1e-6, atol=1e-6)
    # With every hospital in every round, c stays the mean of what the hospitals sent of their control variates
    # (each c_i is the sum of its changes, from 0), up to the rounding and noise of each round's sum.
    own = [np.sum(changes, axis=0) for changes in sent.values()]
    assert np.max(np.abs(checkpoint_control(tmp_path, ROUNDS) - np.mean(own, axis=0))) < 10 * sigma
    # Each hospital's round-2 change is its loss gradient at the round-2 global model minus its c_i, and that c_i is
    # what the sum received of its round-1 change (clipped and clamped), not the exact gradient it sent.
    model = build_model("tiny", 2, config.data_seed)
    spec = parameter_spec(model.state_dict())
    start = checkpoint_weights(tmp_path, 1).astype(np.float32)
    training = LocalTraining(1, config.learning_rate, config.batch_size,
                             imbalance=config.imbalance)  # type: ignore[arg-type]
    for index, node in enumerate(consortium.node_ids):
        settings = node_settings_for("tiny", config.image_size, config.images_per_node * NODES, NODES,
                                     config.partition_scheme, config.partition_alpha, config.data_seed)
        data = load_local_data(settings.model_copy(update={"partition_index": index}))
        model.load_state_dict(restore_state(model.state_dict(), start, spec))
        gradient = flatten_named(loss_gradient(model, data, training, torch.device("cpu")), spec)
        np.testing.assert_allclose(node_update(records, node, 2)[count:], gradient - sent[node][0],
                                   rtol=1e-4, atol=1e-6)
