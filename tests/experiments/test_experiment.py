"""The side-by-side experiment and the centralized baseline, end to end on a tiny model (real services)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import experiment, paired
from experiments.centralized import FINAL_STATE, pooled_data, run_centralized
from scripts.launcher import ConsortiumConfig
from services.common.ml.classification_metrics import confusion_matrix
from services.common.ml.head_refit import feature_moments, lda_head
from services.common.ml.model_spec import flatten_state
from services.common.ml.models import build_model
from services.common.ml.trainable import classifier_head
from services.common.runtime.atomic_files import read_json_lines
from services.hospital_node.config import DataSettings
from services.hospital_node.data.local_data import load_local_data
from services.hospital_node.trainer import LocalTraining, predict
from tests.e2e.consortium_checks import checkpoint_weights
from tests.threads import one_torch_thread


def _data_config(seed: int, **settings: object) -> ConsortiumConfig:
    """The SYNTHETIC data of a 5-hospital experiment of 24 images each, as experiments.experiment --seed makes it."""
    return ConsortiumConfig(run_dir=Path("."), insecure=True, images_per_node=24,
                            settings={"architecture": "tiny", "image_size": 32, "partition_scheme": "label_mix",
                                      "synthetic_seed": seed, "model_seed": seed, **settings})


@pytest.mark.e2e  # both consortia run as real services
def test_side_by_side_experiment_reports_secure_plaintext_and_centralized(tmp_path: Path) -> None:
    code = experiment.main(["--out", str(tmp_path), "--rounds", "2", "--architecture", "tiny", "--image-size",
                            "32", "--images-per-node", "24", "--local-epochs", "1", "--centralized-epochs", "2",
                            "--batch-size", "16", "--imbalance", "logit_adjust", "--partition", "label_mix",
                            "--calibration-fraction", "0.5", "--seed", "2", "--learning-rate", "0.02",
                            "--round-schedule", "cosine", "--round-floor", "0.25", "--torch-threads", "1",
                            "--encryption-workers", "0", "--server-momentum", "0.5", "--local-optimizer", "sgd",
                            "--no-head-refit", "--concurrent",
                            "--timeout", "600"])
    assert code == 0
    report = (tmp_path / "REPORT.md").read_text()
    for run in ("secure", "plaintext", "centralized"):
        assert f"| {run} | 2 |" in report, run
    secure_rows = read_json_lines(tmp_path / "secure" / "aggregator" / "rounds.jsonl")
    assert 0 < float(secure_rows[-1]["epsilon"]) < float("inf")
    assert "imbalance logit_adjust" in report and "momentum 0.5" in report
    # The round schedule: both consortia's plans and the baseline step at 0.02 in round 1 and 0.25 x 0.02 in round 2.
    assert "lr 0.02 falling along a cosine to 0.25x by the last round" in report
    for rows_path in (tmp_path / "secure" / "aggregator" / "rounds.jsonl",
                      tmp_path / "plaintext" / "aggregator" / "rounds.jsonl", tmp_path / "centralized" / "rounds.jsonl"):
        rates = [row.get("learning_rate") for row in read_json_lines(rows_path)]
        assert rates[-2:] == pytest.approx([0.02, 0.005]), rows_path
    # The baseline's epochs are its own: 2 passes over the pooled training split per round, not the local 1.
    assert "centralized: 2 epochs per round" in report
    config = _data_config(2, calibration_fraction=0.5)
    pooled = pooled_data(config)
    other_seed = pooled_data(_data_config(0, calibration_fraction=0.5))
    evaluated = torch.bincount(pooled.val_labels, minlength=2).tolist()
    assert evaluated != torch.bincount(other_seed.val_labels, minlength=2).tolist()  # the seed changes the data
    # Both consortia start from seed 2's initial model, not seed 0's; so does the baseline.
    initial = flatten_state(build_model("tiny", 2, 2).state_dict()).astype(np.float64)
    assert not np.array_equal(initial, flatten_state(build_model("tiny", 2, 0).state_dict()))
    for mode in ("secure", "plaintext"):
        np.testing.assert_array_equal(checkpoint_weights(tmp_path / mode, 0), initial, err_msg=mode)
    assert config.node_settings(0).model_seed == 2
    # The class counts the report plots are those the hospitals sent when they joined: their own seed-2 data.
    held = [load_local_data(DataSettings.of(config.node_settings(i))) for i in range(5)]
    counts = [torch.bincount(torch.cat([d.train_labels, d.val_labels, d.cal_labels]), minlength=2).tolist()
              for d in held]
    joined = json.loads((tmp_path / "secure" / "aggregator" / "class_counts.json").read_text())
    assert joined["hospitals"] == [f"hospital-{i + 1}" for i in range(5)] and joined["counts"] == counts
    # The aggregator pooled the masked counts of the first round's five hospitals: their masks cancelled exactly.
    summed = json.loads((tmp_path / "secure" / "aggregator" / "pooled_class_counts.json").read_text())
    assert summed["round"] == 1 and summed["hospitals"] == joined["hospitals"]
    assert summed["counts"] == np.sum(counts, axis=0).tolist()
    central = read_json_lines(tmp_path / "centralized" / "rounds.jsonl")[-1]
    assert central["epochs"] == 2 and central["steps"] == 2 * (pooled.train_labels.numel() // 16)
    # Every run chose an operating point on the hospitals' calibration images and evaluated the others at it:
    # 24 images per hospital, 5 held out, 2 of them (round(2.5)) for calibration, 3 evaluated.
    assert pooled.cal_labels.numel() == 5 * 2 and pooled.val_labels.numel() == 5 * 3
    for rows_path in (tmp_path / "secure" / "aggregator" / "rounds.jsonl",
                      tmp_path / "plaintext" / "aggregator" / "rounds.jsonl", tmp_path / "centralized" / "rounds.jsonl"):
        last = read_json_lines(rows_path)[-1]["evaluation"]
        assert sum(map(sum, last["calibrated"]["confusion"])) == last["examples"] == 15, rows_path
        # Every run evaluated seed 2's images: the confusion matrix's rows count their true classes.
        assert [sum(row) for row in last["confusion"]] == evaluated, rows_path
    # The tiny model's BatchNorm statistics stay at each hospital, so the global model alone is not the model they
    # evaluated: the paired comparison says so instead of scoring a different model.
    for mode in ("secure", "plaintext"):
        assert f"No paired F1 gap for {mode}: {mode}: each hospital keeps 6 normalisation statistics" in report
    # The baseline's saved model is the one it evaluated last.
    baseline = paired.final_model("centralized", tmp_path / "centralized", "tiny", 2)
    with one_torch_thread():  # as the baseline evaluated (--torch-threads 1): the same sums, to the last digit
        scores = paired.positive_scores(baseline, "tiny", pooled, torch.device("cpu"))
    assert confusion_matrix(pooled.val_labels.numpy(), scores.argmax(axis=1), 2).tolist() == central["evaluation"]["confusion"]


def test_the_centralized_baseline_trains_with_the_hospitals_thread_count(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    monkeypatch.setattr(experiment, "run_centralized", lambda *args, **kwargs: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    threads = max(1, before - 1) if before > 1 else 2
    experiment.centralized(_data_config(0, torch_threads=threads, rounds=1), 1, tmp_path, 1)
    assert seen == [threads] and seen[0] != before
    assert torch.get_num_threads() == before  # the launcher's own count is restored afterwards


def test_the_centralized_baseline_refits_its_head_like_the_consortium(tmp_path: Path) -> None:
    config = _data_config(3, rounds=1, head_refit=True)
    training = LocalTraining(1, 0.02, 16)
    rows = run_centralized(config, training, tmp_path)
    assert [r["round"] for r in rows] == [0, 1, 2] and rows[-1]["head_refit"] is True
    assert not rows[1].get("head_refit")
    model = build_model("tiny", 2, 3)
    model.load_state_dict(torch.load(tmp_path / FINAL_STATE))
    data = pooled_data(config)
    # The head's inputs do not depend on the head: the saved body's features refit to the saved head.
    weight, bias = lda_head(feature_moments(model, data.train_images, data.train_labels, num_classes=2,
                                            device=torch.device("cpu")))
    head = classifier_head(model)
    np.testing.assert_allclose(head.weight.detach().numpy(), weight, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(head.bias.detach().numpy(), bias, rtol=1e-4, atol=1e-5)
    # ... and the refit model is the one its last row evaluated.
    scores = predict(model, data.val_images, data.val_labels, num_classes=2, device=torch.device("cpu"))[0]
    assert confusion_matrix(data.val_labels.numpy(), scores.argmax(axis=1), 2).tolist() == \
        rows[-1]["evaluation"]["confusion"]  # type: ignore[index]
