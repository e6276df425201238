"""experiments.paired: both final models scored again on the same images, checked against what their runs recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from experiments import paired
from experiments.centralized import FINAL_STATE, pooled_data
from scripts.launcher import ConsortiumConfig
from services.common.ml.classification_metrics import confusion_at_edge, histogram_edges, metrics_from_confusion
from services.common.ml.model_spec import flatten_state
from services.common.ml.models import build_model
from services.hospital_node.config import DataSettings
from services.hospital_node.data.local_data import load_local_data
from services.hospital_node.trainer import evaluate

CONFIG = ConsortiumConfig(run_dir=Path("."), insecure=True, images_per_node=100,
                          settings={"architecture": "resnet18", "image_size": 32, "partition_scheme": "label_mix",
                                    "calibration_fraction": 0.5})
pytestmark = pytest.mark.slow  # ResNet-18 over 500 images, several times
EDGE = 47  # the calibrated threshold each run is recorded with: histogram_edges()[EDGE], below 0.5


def _recorded_row(model: torch.nn.Module, round_id: int) -> dict[str, object]:
    """The last row as the aggregator pools it: each hospital's own evaluation counts, summed."""
    counts = [evaluate(model, part.val_images, part.val_labels, num_classes=2, device=torch.device("cpu"))
              for part in (load_local_data(DataSettings.of(CONFIG.node_settings(i))) for i in range(5))]
    confusion = np.sum([c.confusion for c in counts], axis=0)
    positive = np.sum([c.positive_histograms for c in counts], axis=0)
    negative = np.sum([c.negative_histograms for c in counts], axis=0)
    calibrated = confusion_at_edge(positive[1], negative[1], EDGE)
    return {"round": round_id, "evaluation": {
        "confusion": confusion.tolist(),
        "calibrated": {"threshold": float(histogram_edges()[EDGE]), "confusion": calibrated.tolist()}}}


def _model(seed: int) -> torch.nn.Module:
    """An untrained model whose scores differ from image to image (a fresh one scores every image alike)."""
    model = build_model("resnet18", 2, seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.2 * torch.randn_like(parameter))
    return model


def _runs(tmp_path: Path) -> tuple[Path, Path]:
    federated, centralized = _model(5), _model(6)
    run = tmp_path / "secure"
    (run / "aggregator" / "checkpoints").mkdir(parents=True)
    (run / "aggregator" / "rounds.jsonl").write_text(json.dumps({"round": 0}) + "\n"
                                                     + json.dumps(_recorded_row(federated, 3)) + "\n")
    np.savez(run / "aggregator" / "checkpoints" / "round_0003.npz",
             weights=flatten_state(federated.state_dict()).astype(np.float32))
    baseline = tmp_path / "centralized"
    baseline.mkdir()
    (baseline / "rounds.jsonl").write_text(json.dumps(_recorded_row(centralized, 3)) + "\n")
    torch.save(centralized.state_dict(), baseline / FINAL_STATE)
    return run, baseline


def test_paired_gap_is_the_recorded_f1_difference_at_argmax_and_at_the_calibrated_threshold(tmp_path: Path) -> None:
    run, baseline = _runs(tmp_path)
    central = paired.final_model("centralized", baseline, "resnet18", 2)
    secure = paired.final_model("secure", run, "resnet18", 2)
    gaps = paired.compare(central, secure, "resnet18", pooled_data(CONFIG), torch.device("cpu"))
    assert set(gaps) == {"argmax", "calibrated"}
    for point, gap in gaps.items():
        def f1(row: dict[str, object]) -> float:
            evaluation = row["evaluation"]
            assert isinstance(evaluation, dict)
            return metrics_from_confusion((evaluation["calibrated"] if point == "calibrated" else evaluation)["confusion"]).f1
        assert gap.difference == pytest.approx(f1(central.row) - f1(secure.row), abs=1e-12), point
        assert gap.low <= gap.difference <= gap.high
    # Not a degenerate case: the two models' predictions differ on some images, at both points.
    assert all(gap.sd > 0 for gap in gaps.values())
    assert central.row["evaluation"] != secure.row["evaluation"]
    assert "Paired F1 gap at argmax, centralized minus secure" in paired.describe("centralized", "secure", gaps)


def test_a_model_that_is_not_the_recorded_one_is_refused(tmp_path: Path) -> None:
    run, baseline = _runs(tmp_path)
    rows = (run / "aggregator" / "rounds.jsonl").read_text().splitlines()
    last = json.loads(rows[-1])
    last["evaluation"]["confusion"] = [[sum(map(sum, last["evaluation"]["confusion"])), 0], [0, 0]]
    (run / "aggregator" / "rounds.jsonl").write_text("\n".join(rows[:-1] + [json.dumps(last)]) + "\n")
    with pytest.raises(ValueError, match="secure at argmax: recomputed confusion .* is not the recorded"):
        paired.compare(paired.final_model("centralized", baseline, "resnet18", 2),
                       paired.final_model("secure", run, "resnet18", 2), "resnet18", pooled_data(CONFIG),
                       torch.device("cpu"))


def test_a_model_whose_hospitals_keep_batchnorm_statistics_is_refused(tmp_path: Path) -> None:
    run, _ = _runs(tmp_path)
    with pytest.raises(ValueError, match="each hospital keeps 106 normalisation statistics"):
        paired.final_model("secure", run, "resnet50-bn", 2)
