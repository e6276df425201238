import json
from pathlib import Path

from scripts.report import write_report


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
    (secure / "class_counts.json").write_text(json.dumps({"classes": ["A", "B"], "counts": [[3, 1], [0, 4]]}))
    report = write_report({"secure": secure, "centralized": centralized}, tmp_path / "out", "t")
    text = report.read_text()
    assert "F1 gap, centralized minus secure: +14.0 points" in text  # 0.75 - 0.61
    assert "SYNTHETIC" in text
    for plot in ("metrics_per_round.png", "class_distribution.png", "latency_per_phase.png", "epsilon.png"):
        assert (tmp_path / "out" / plot).stat().st_size > 1000
        assert f"({plot})" in text
