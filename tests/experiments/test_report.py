import json
import math
from pathlib import Path
from typing import Any

import pytest

from experiments import report as report_module
from experiments.report import write_report
from services.common.ml.classification_metrics import f1_sampling_sd


def _run(directory: Path, f1s: list[float], phases: bool) -> Path:
    directory.mkdir(parents=True)
    rows = []
    for round_id, f1 in enumerate(f1s):
        row = {"round": round_id, "participants": 5, "seconds": 1.0 + round_id, "epsilon": 2.0 * round_id,
               "evaluation": {"accuracy": 0.5, "precision": 0.5, "recall": 0.5, "specificity": 0.5, "f1": f1,
                              "auc": 0.6}}
        if phases and round_id:
            row["phases"] = {p: 0.1 for p in ("train", "encode", "encrypt", "upload", "aggregate", "decrypt",
                                              "apply")}
        rows.append(row)
    (directory / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return directory


def test_report_writes_plots_and_the_f1_gap_to_the_centralized_baseline(tmp_path: Path) -> None:
    secure = _run(tmp_path / "secure", [0.0, 0.40, 0.61], phases=True)
    centralized = _run(tmp_path / "centralized", [0.0, 0.5, 0.75], phases=False)
    (secure / "aggregator").mkdir()
    (secure / "aggregator" / "class_counts.json").write_text(json.dumps(
        {"classes": ["A", "B"], "hospitals": ["st-anna", "city"], "counts": [[3, 1], [0, 4]], "not_shared": []}))
    (secure / "run.json").write_text(json.dumps({"data": "SYNTHETIC radiographs"}))
    report = write_report({"secure": secure, "centralized": centralized}, tmp_path / "out", "t")
    text = report.read_text()
    assert "F1 gap, centralized minus secure: +14.0 points" in text  # 0.75 - 0.61
    assert "All figures below come from **SYNTHETIC** radiographs" in text
    for plot in ("metrics_per_round.png", "class_distribution.png", "latency_per_phase.png", "epsilon.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 1000
        assert f"({plot})" in text


def test_report_gives_each_f1_its_sampling_sd_and_the_gap_its_combined_sd(tmp_path: Path) -> None:
    runs = {}
    for label, confusion in (("secure", [[40, 10], [15, 35]]), ("centralized", [[45, 5], [10, 40]])):
        directory = _run(tmp_path / label, [0.0, 0.5], phases=False)
        rows = [json.loads(line) for line in (directory / "rounds.jsonl").read_text().splitlines()]
        rows[-1]["evaluation"]["confusion"] = confusion
        (directory / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        runs[label] = directory
    text = write_report(runs, tmp_path / "out", "t").read_text()
    secure_sd, central_sd = f1_sampling_sd([[40, 10], [15, 35]]), f1_sampling_sd([[45, 5], [10, 40]])
    assert 0.03 < secure_sd < 0.08  # about sqrt(F1 (1 - F1) / 50) for 50 positives
    assert f"| 0.600 | {secure_sd:.3f} | 2 |" in text  # the secure row: AUC, F1 SD, epsilon
    assert f"(sampling SD {math.hypot(secure_sd, central_sd) * 100:.1f}, as if" in text


def test_the_head_refit_row_is_marked_as_such(tmp_path: Path) -> None:
    secure = _run(tmp_path / "secure", [0.0, 0.40, 0.61], phases=False)
    rows = [json.loads(line) for line in (secure / "rounds.jsonl").read_text().splitlines()]
    rows[-1]["head_refit"] = True
    (secure / "rounds.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    text = write_report({"secure": secure}, tmp_path / "out", "t").read_text()
    assert "| secure | 2 (head refit) |" in text  # the final model is the refit one
    assert "| 1 | 5 |" in text and "| 2 (head refit) | 5 |" in text


def test_the_report_names_the_data_and_says_synthetic_only_when_it_is(tmp_path: Path) -> None:
    secure = _run(tmp_path / "secure", [0.0, 0.40, 0.61], phases=False)
    (secure / "run.json").write_text(json.dumps({"data": "own images (folder)"}))
    text = write_report({"secure": secure}, tmp_path / "out", "t").read_text()
    assert "Data: own images (folder)." in text and "SYNTHETIC" not in text
    assert "No class-distribution plot" in text  # said, not silently left out
    (secure / "run.json").unlink()
    text = write_report({"secure": secure}, tmp_path / "out2", "t").read_text()
    assert "Data: data not recorded." in text and "SYNTHETIC" not in text


def test_the_class_plot_adds_the_pooled_counts_of_every_hospital_and_says_who_kept_theirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One hospital kept its counts: it has no bar of its own, and the pooled bar (every hospital, from the masked
    sum) is there, with its counts."""
    secure = _run(tmp_path / "secure", [0.0, 0.40, 0.61], phases=False)
    (secure / "aggregator").mkdir()
    (secure / "aggregator" / "class_counts.json").write_text(json.dumps(
        {"classes": ["A", "B"], "hospitals": ["st-anna", "city"], "counts": [[3, 1], [0, 4]], "not_shared": ["port"]}))
    (secure / "aggregator" / "pooled_class_counts.json").write_text(json.dumps(
        {"round": 1, "attempt": 1, "hospitals": ["city", "port", "st-anna"], "classes": ["A", "B"], "counts": [10, 9]}))
    drawn: list[tuple[list[str], dict[str, list[float]]]] = []
    stacked = report_module._stacked_bars
    def record(axis: Any, labels: list[str], stacks: dict[str, list[float]]) -> None:
        stacked(axis, labels, stacks)
        drawn.append((list(labels), stacks))
    monkeypatch.setattr(report_module, "_stacked_bars", record)
    write_report({"secure": secure}, tmp_path / "out", "t")
    labels, stacks = drawn[0]
    assert labels == ["st-anna", "city", "all 3\n(pooled)"]
    assert stacks == {"A": [3.0, 0.0, 10.0], "B": [1.0, 4.0, 9.0]}
    assert (tmp_path / "out" / "class_distribution.png").stat().st_size > 1000
