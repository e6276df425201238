"""A hospital's own images through one command: `python -m scripts.consortium --hospital NAME=SOURCE:PATH ...`.

The folders are generated PNGs in the Kaggle layout (tests/scripts/png_hospitals.py): SYNTHETIC pictures whose
PNEUMONIA class carries one bright blob, a plain signal on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.launcher import QUICK_TRAINING, TABLE_HEADER, Consortium, ConsortiumConfig
from tests.scripts.png_hospitals import write_hospital

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
