"""A hospital's own images through one command: `python -m scripts.consortium --hospital NAME=SOURCE:PATH ...`.

The folders are generated PNGs in the Kaggle layout (tests/scripts/png_hospitals.py): SYNTHETIC pictures whose
PNEUMONIA class carries one bright blob, a plain signal on purpose.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scripts.export_model import TOLERANCE, export
from scripts.launcher import QUICK_TRAINING, TABLE_HEADER, Consortium, ConsortiumConfig
from scripts.predict import main as predict_main
from services.common.runtime.atomic_files import read_json_lines
from tests.scripts.png_hospitals import write_hospital
from tests.threads import one_torch_thread

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
HOSPITALS = ("st-anna", "city", "north")
# 3 hospitals x 20 validation images, 30 per class. A scorer that knows nothing has an AUC of 0.5 with standard
# deviation sqrt((n0 + n1 + 1) / (12 n0 n1)) = 0.075 here (Hanley and McNeil's null variance); 0.75 is more than
# three of those above chance, so passing cannot be luck, while the run reaches 0.95 to 1.0 on these folders.
LEARNED_AUC = 0.75


def test_own_folders_run_in_one_command_print_the_table_and_learn(tmp_path: Path) -> None:
    arguments = []
    for seed, name in enumerate(HOSPITALS):
        write_hospital(tmp_path / "data" / name, seed)
        arguments += ["--hospital", f"{name}=folder:{tmp_path / 'data' / name}"]
    result = subprocess.run(
        [sys.executable, "-m", "scripts.consortium", "--run-dir", str(tmp_path / "run"), "--architecture", "tiny-gn",
         "--image-size", "32", "--rounds", "2", "--class-names", "NORMAL,PNEUMONIA", "--record-epsilon", "0", *arguments],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    assert "3 hospitals on their own images (folder)" in out and "SYNTHETIC radiographs" not in out
    # Off only because the command said so; every hospital logged that it trains without DP-SGD.
    assert "record-level DP-SGD is OFF in this trial run" in out
    for name in HOSPITALS:
        assert "record-level DP-SGD is OFF by this hospital's setting" in (tmp_path / "run" / "logs" / f"{name}.log").read_text()
    # The class table comes from what each hospital sent when it joined, with its own name.
    assert "class counts the hospitals sent when they joined:" in out
    for name in HOSPITALS:
        assert any(line.split()[:3] == [name, "40", "40"] for line in out.splitlines()), out
    assert TABLE_HEADER in out
    rows = [line.split() for line in out.splitlines() if line.split() and line.split()[0] in {"0", "1", "2", "3"}]
    assert [row[0] for row in rows] == ["0", "1", "2", "3"] and rows[-1][-2:] == ["head", "refit"]
    auc = float(rows[-1][7])
    assert auc >= LEARNED_AUC, out
    _use_the_model(tmp_path)


def _use_the_model(tmp_path: Path) -> None:
    """The run's model card, `predict` on the hospitals' own validation images (which reproduces the pooled
    validation counts of the final row), and `export`, whose TorchScript and ONNX files match PyTorch."""
    run = tmp_path / "run"
    last = [r for r in read_json_lines(run / "aggregator" / "rounds.jsonl") if r.get("evaluation")][-1]
    card = json.loads((run / "model.json").read_text())
    assert card["class_names"] == ["NORMAL", "PNEUMONIA"] and card["round"] == last["round"]
    text = (run / "MODEL_CARD.md").read_text()
    assert "own images (folder)" in text and f"{last['evaluation']['auc']:.3f}" in text
    assert all(f"| {name} | 40 | 40 |" in text for name in HOSPITALS)
    folders = [tmp_path / "data" / name / "val" for name in HOSPITALS]
    with one_torch_thread():  # as the nodes evaluated (torch_threads=1): the same sums, to the last digit
        assert predict_main(["--run-dir", str(run), "--out", str(tmp_path / "p.csv"), *map(str, folders)]) == 0
    with open(tmp_path / "p.csv") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 60
    confusion = np.zeros((2, 2), dtype=int)
    for row in predictions:
        truth = card["class_names"].index(Path(row["file"]).parent.name)
        confusion[truth, card["class_names"].index(row["predicted"])] += 1
        assert abs(float(row["p_NORMAL"]) + float(row["p_PNEUMONIA"]) - 1) < 1e-5
    assert confusion.tolist() == last["evaluation"]["confusion"]
    exported = export(run, tmp_path / "export")
    assert exported.torchscript_error <= TOLERANCE and exported.onnx_error <= TOLERANCE
    assert (tmp_path / "export" / "model.onnx").stat().st_size > 1000


def test_a_hospital_whose_lowercase_folder_would_swap_the_labels_is_refused_at_join(tmp_path: Path) -> None:
    """`normal` sorts after `PNEUMONIA`: this hospital's classes are (PNEUMONIA, normal), its labels swapped against
    the consortium's. It is refused when it joins, exits 2 saying which names differ, and the others go on."""
    for seed, name in enumerate(HOSPITALS):
        write_hospital(tmp_path / "data" / name, seed)
    write_hospital(tmp_path / "data" / "west", 9, folders=("normal", "PNEUMONIA"))
    names = [*HOSPITALS, "west"]
    config = ConsortiumConfig(
        run_dir=tmp_path / "run", nodes=4, node_names=names,
        settings={"architecture": "tiny-gn", "image_size": 32, "rounds": 1, "encryption_workers": 0,
                  "torch_threads": 1, **QUICK_TRAINING},
        aggregator={"class_names": ("NORMAL", "PNEUMONIA"), "join_timeout_seconds": 30},
        per_node={i: {"data_source": "folder", "data_path": tmp_path / "data" / name} for i, name in enumerate(names)})
    with Consortium(config) as consortium:
        code = consortium.wait(300)
        west = consortium.services["west"].process.wait(60)
    log = (consortium.logs / "west.log").read_text()
    assert west == 2
    assert ("the aggregator refused this hospital's join (FAILED_PRECONDITION): class names of west "
            "['PNEUMONIA', 'normal'] differ from the consortium's ['NORMAL', 'PNEUMONIA']: label 0: 'PNEUMONIA' at "
            "west, 'NORMAL' in the consortium; label 1: 'normal' at west, 'PNEUMONIA' in the consortium") in log
    assert code == 0
    rows = [r for r in consortium.rows() if int(str(r["round"])) > 0]
    assert rows and all(set(r["contributors"]) == set(HOSPITALS) for r in rows)  # type: ignore[arg-type]
    aggregator_log = (consortium.logs / "aggregator.log").read_text()
    assert "refused Subscribe: class names of west" in aggregator_log
