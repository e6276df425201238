"""The closing head refit through the real services: three hospitals, one secure round, then the statistics round."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scripts.launcher import Consortium, ConsortiumConfig
from services.common.ml.head_refit import head_positions, lda_head, moments_from_statistics, statistics_dimension
from services.common.ml.model_spec import parameter_spec
from services.common.ml.models import build_model
from tests.e2e.consortium_checks import (
    checkpoint_weights,
    field_sum,
    node_fields,
    node_update,
    recording,
    round_plan,
    run_to_completion,
    status,
    tiny_config,
)

NODES, ROUNDS = 3, 1
REFIT = ROUNDS + 1


def _config(run_dir: Path, seed: int, settings: dict[str, object] | None = None, **changes: object
            ) -> ConsortiumConfig:
    """Three hospitals of the tiny model, one training round, then the refit."""
    return tiny_config(run_dir, NODES, ROUNDS, seed=seed, hooks=recording(run_dir),
                       settings={"clip_norm": 5.0, "partition_scheme": "label_mix", "head_refit": True,
                                 **(settings or {})}, **changes)


@pytest.fixture(scope="module")
def refit_run(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    run_dir = tmp_path_factory.mktemp("refit")
    config = _config(run_dir, 3, {"noise_variance": 12.0}, aggregator={"linger_seconds": 30})
    with Consortium(config) as consortium:
        code = consortium.wait(420)
        key_authority = status(consortium, "key_authority")
    assert code == 0, (consortium.logs / "aggregator.log").read_text()[-3000:]
    return run_dir, consortium, key_authority


def test_the_refit_round_follows_training_and_its_model_is_evaluated(refit_run) -> None:  # type: ignore[no-untyped-def]
    run_dir, consortium, key_authority = refit_run
    rows = {int(r["round"]): r for r in consortium.rows()}
    assert rows[REFIT]["head_refit"] is True and rows[REFIT]["participants"] == NODES
    assert not rows[ROUNDS].get("head_refit")
    # The refit model was scored by every hospital, like a trained round's model.
    assert rows[REFIT]["evaluation"]["examples"] == rows[ROUNDS]["evaluation"]["examples"] > 0
    # The key authority decrypted the statistics sum as a round of its own.
    assert list(key_authority.decrypted_rounds) == [1, REFIT]
    # Its release has a line in the accountant: epsilon grows past the training rounds'.
    assert rows[REFIT]["epsilon"] > rows[ROUNDS]["epsilon"] > 0


def test_statistics_are_summed_exactly_in_wide_fields(refit_run) -> None:  # type: ignore[no-untyped-def]
    run_dir, consortium, _ = refit_run
    plan = round_plan(run_dir, REFIT)
    bits = int(plan["bits"])
    assert bits > 32  # one field per slot, far wider than an update's
    records = run_dir / "records"
    encoded = [node_fields(records, node, REFIT).astype(np.int64) for node in consortium.node_ids]
    assert np.array_equal(field_sum(run_dir, REFIT), np.mod(np.sum(encoded, axis=0), 1 << bits))
    # Decoded, the sum is the hospitals' scaled statistics up to rounding and noise of about 1e-9 of the largest.
    records_sum = np.sum([node_update(records, node, REFIT) for node in consortium.node_ids], axis=0)
    offsets = int(plan["participants"]) * (1 << (bits - 1))  # each node's offset binary
    signed = np.mod(field_sum(run_dir, REFIT) - offsets + (1 << (bits - 1)), 1 << bits) - (1 << (bits - 1))
    decoded = signed / float(plan["scale"])  # Skellam noise has mean 0
    assert np.abs(decoded - records_sum).max() < 1e-8 * np.abs(records_sum).max()


def test_the_head_is_the_lda_fit_of_the_summed_statistics_and_the_body_is_untouched(refit_run) -> None:  # type: ignore[no-untyped-def]
    run_dir, consortium, _ = refit_run
    model = build_model("tiny", 2, 0)
    head = head_positions(model, parameter_spec(model.state_dict()))
    records = run_dir / "records"
    vectors = [node_update(records, node, REFIT) for node in consortium.node_ids]
    assert all(v.shape == (statistics_dimension(2, head.features),) for v in vectors)
    # Each hospital scaled its statistics to the clip norm.
    np.testing.assert_allclose([np.linalg.norm(v) for v in vectors], 5.0, rtol=1e-9)
    # Both classes are present in the pooled statistics, and each hospital counts only non-negative images.
    assert all(np.all(v[:2] >= 0) for v in vectors) and np.all(np.sum(vectors, axis=0)[:2] > 0)
    weight, bias = lda_head(moments_from_statistics(np.sum(vectors, axis=0), 2, head.features))
    before, after = checkpoint_weights(run_dir, ROUNDS), checkpoint_weights(run_dir, REFIT)
    # Up to the codec's rounding and noise (about 1e-9 of the largest statistic), which the tiny model's many dead
    # features amplify: their variance is zero, so only the shrinkage keeps the covariance invertible.
    def relative(got: np.ndarray, want: np.ndarray) -> float:
        return float(np.linalg.norm(got.reshape(-1) - want.reshape(-1)) / np.linalg.norm(want))

    assert relative(after[head.weight], weight) < 1e-3
    assert relative(before[head.weight], weight) > 0.5  # the averaged head was not already the fit
    assert head.bias is not None
    assert relative(after[head.bias], bias) < 1e-3
    body = np.ones(after.size, dtype=bool)
    body[head.weight] = False
    body[head.bias] = False
    assert np.array_equal(after[body], before[body])


def test_the_refit_also_runs_in_plaintext_mode_beside_drift_correction(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Plaintext uploads (privacy off, the comparison runs) and SCAFFOLD's doubled broadcast: the statistics round
    # has its own upload length either way, and the control variate is left as it was.
    consortium = run_to_completion(_config(tmp_path, 4, {"secure": False, "allow_plaintext": True, "drift_correction": True}))
    rows = {int(r["round"]): r for r in consortium.rows()}
    assert rows[REFIT]["head_refit"] is True and not rows[REFIT].get("failed")
    model = build_model("tiny", 2, 0)
    head = head_positions(model, parameter_spec(model.state_dict()))
    vectors = [node_update(tmp_path / "records", node, REFIT) for node in consortium.node_ids]
    # Summed as float32, so the head matches to float32's precision, not the secure layout's.
    weight, _ = lda_head(moments_from_statistics(np.sum([v.astype(np.float32) for v in vectors], axis=0), 2,
                                                 head.features))
    after, before = checkpoint_weights(tmp_path, REFIT), checkpoint_weights(tmp_path, ROUNDS)
    assert np.linalg.norm(after[head.weight] - weight.reshape(-1)) < 1e-2 * np.linalg.norm(weight)
    assert np.linalg.norm(before[head.weight] - weight.reshape(-1)) > 0.5 * np.linalg.norm(weight)
    with np.load(tmp_path / "aggregator" / "checkpoints" / f"round_{REFIT:04d}.npz") as refit, \
            np.load(tmp_path / "aggregator" / "checkpoints" / f"round_{ROUNDS:04d}.npz") as trained:
        assert np.array_equal(refit["opt_control"], trained["opt_control"])


def test_a_three_class_model_gets_a_three_class_head(tmp_path) -> None:  # type: ignore[no-untyped-def]
    consortium = run_to_completion(_config(tmp_path, 6, {"num_classes": 3}))
    rows = {int(r["round"]): r for r in consortium.rows()}
    assert rows[REFIT]["head_refit"] is True and not rows[REFIT].get("failed")
    assert len(rows[REFIT]["evaluation"]["confusion"]) == 3
    model = build_model("tiny", 3, 0)
    head = head_positions(model, parameter_spec(model.state_dict()))
    vectors = [node_update(tmp_path / "records", node, REFIT) for node in consortium.node_ids]
    assert all(v.shape == (statistics_dimension(3, head.features),) for v in vectors)
    weight, bias = lda_head(moments_from_statistics(np.sum(vectors, axis=0), 3, head.features))
    assert weight.shape == (3, head.features)
    after = checkpoint_weights(tmp_path, REFIT)
    assert np.linalg.norm(after[head.weight] - weight.reshape(-1)) < 1e-3 * np.linalg.norm(weight)


def test_a_refit_that_cannot_be_fitted_leaves_the_model_as_it_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Every hospital holds NORMAL images only, so the summed statistics count one class and LDA has no second class
    # to tell it from. The refit round is released and accounted, marked failed, and the model stays the trained one.
    folder = tmp_path / "images" / "train" / "NORMAL"
    folder.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, size=(40, 32, 32), dtype=np.uint8)
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{index}.png")
    own_images = {"data_source": "folder", "data_path": tmp_path / "images", "class_names": "NORMAL,OPACITY",
                  "record_dp": "off"}  # own images are private by default, and DP-SGD does not cover a refit
    consortium = run_to_completion(_config(tmp_path, 8, node=own_images))
    rows = {int(r["round"]): r for r in consortium.rows()}
    assert not rows[ROUNDS].get("failed")
    refit = rows[REFIT]
    assert refit["head_refit"] is True and refit["failed"] is True
    assert "at least two classes" in str(refit["error"])
    assert refit["epsilon"] > rows[ROUNDS]["epsilon"]  # released, so accounted
    assert np.array_equal(checkpoint_weights(tmp_path, REFIT), checkpoint_weights(tmp_path, ROUNDS))
    # The evaluation-only round after it scored the unchanged model.
    assert rows[REFIT]["evaluation"]["examples"] > 0
