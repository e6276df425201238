"""The comparison and screening scripts, end to end on a tiny model (real services for the experiment)."""

import json
from pathlib import Path

import pytest
import torch

from scripts import experiment, sweep
from scripts.centralized import node_settings_for, pooled_data
from services.aggregator.pooled_evaluation import pool_reports
from services.common.models import build_model
from services.hospital_node.trainer import evaluation_report


def test_side_by_side_experiment_reports_secure_plaintext_and_centralized(tmp_path: Path) -> None:
    code = experiment.main(["--out", str(tmp_path), "--rounds", "1", "--architecture", "tiny", "--image-size",
                            "32", "--images-per-node", "24", "--local-epochs", "1", "--centralized-epochs", "2",
                            "--batch-size", "16", "--imbalance", "logit_adjust", "--partition", "label_mix",
                            "--calibration-fraction", "0.5", "--seed", "2",
                            "--server-momentum", "0.5", "--concurrent", "--timeout", "600"])
    assert code == 0
    report = (tmp_path / "REPORT.md").read_text()
    for run in ("secure", "plaintext", "centralized"):
        assert f"| {run} | 1 |" in report, run
    secure_rows = [json.loads(line) for line in
                   (tmp_path / "secure" / "aggregator" / "rounds.jsonl").read_text().splitlines()]
    assert 0 < float(secure_rows[-1]["epsilon"]) < float("inf")
    assert "imbalance logit_adjust" in report and "momentum 0.5" in report
    # The baseline's epochs are its own: 2 passes over the pooled training split per round, not the local 1.
    assert "centralized: 2 epochs per round" in report
    pooled = pooled_data(node_settings_for("tiny", 32, 24 * 5, 5, "label_mix", 0.5, 2, 0.5), 5)
    other_seed = pooled_data(node_settings_for("tiny", 32, 24 * 5, 5, "label_mix", 0.5, 0, 0.5), 5)
    evaluated = torch.bincount(pooled.val_labels, minlength=2).tolist()
    assert evaluated != torch.bincount(other_seed.val_labels, minlength=2).tolist()  # the seed changes the data
    report, _ = evaluation_report(build_model("tiny", 2, 2), pooled, torch.device("cpu"), "check", 0)
    initial = pool_reports([report]).as_dict()
    other_report, _ = evaluation_report(build_model("tiny", 2, 0), pooled, torch.device("cpu"), "check", 0)
    assert pool_reports([other_report]).as_dict()["auc"] != initial["auc"]  # the seed changes the initial model
    central = json.loads((tmp_path / "centralized" / "rounds.jsonl").read_text().splitlines()[-1])
    assert central["epochs"] == 2 and central["steps"] == 2 * (pooled.train_labels.numel() // 16)
    # Every run chose an operating point on the hospitals' calibration images and evaluated the others at it:
    # 24 images per hospital, 5 held out, 2 of them (round(2.5)) for calibration, 3 evaluated.
    assert pooled.cal_labels.numel() == 5 * 2 and pooled.val_labels.numel() == 5 * 3
    for rows_path in (tmp_path / "secure" / "aggregator" / "rounds.jsonl",
                      tmp_path / "plaintext" / "aggregator" / "rounds.jsonl", tmp_path / "centralized" / "rounds.jsonl"):
        last = json.loads(rows_path.read_text().splitlines()[-1])["evaluation"]
        assert sum(map(sum, last["calibrated"]["confusion"])) == last["examples"] == 15, rows_path
        # Every run evaluated seed 2's images: the confusion matrix's rows count their true classes.
        assert [sum(row) for row in last["confusion"]] == evaluated, rows_path
        # ... and started from seed 2's initial model: round 0 scores exactly as that model does.
        first = json.loads(rows_path.read_text().splitlines()[0])
        assert first["round"] == 0 and first["evaluation"]["auc"] == initial["auc"], rows_path
        assert first["evaluation"]["confusion"] == initial["confusion"], rows_path
    assert "## Final model at the calibrated operating point" in report
    assert "Calibrated F1 gap, centralized minus secure" in report


def test_sweep_ranks_every_setting_and_refuses_an_unknown_one(tmp_path: Path) -> None:
    base = "architecture=tiny,image_size=32,images_per_node=20,rounds=2"
    assert sweep.main(["--out", str(tmp_path), "--base", base, "fed=imbalance=logit_adjust,proximal_mu=0.1",
                       "central=mode=centralized"]) == 0
    ranking = json.loads((tmp_path / "ranking.json").read_text())
    assert sorted(row["name"] for row in ranking) == ["central", "fed"]
    assert all(row["rounds"] == 2 for row in ranking)
    assert [row["f1_last"] for row in ranking] == sorted((row["f1_last"] for row in ranking), reverse=True)
    with pytest.raises(SystemExit, match="unknown setting 'lr'"):
        sweep.main(["--out", str(tmp_path), "bad=lr=0.1"])
