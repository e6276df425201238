"""The launcher's console says why a hospital failed: the real `python -m scripts.consortium` on generated PNG
folders (tests/scripts/png_hospitals.py, SYNTHETIC pictures), with a mistake in one of them. Each test checks
what a person at the console reads, and that the run ends at once rather than at its timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scripts.launcher import QUICK_TRAINING, Consortium, ConsortiumConfig, last_reason
from tests.scripts.png_hospitals import write_hospital

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
HOSPITALS = ("st-anna", "city", "north")


def _launch(tmp_path: Path, *extra: str, folders: dict[str, tuple[str, str]] | None = None,
            timeout: float = 300) -> tuple[subprocess.CompletedProcess[str], float]:
    arguments = []
    for seed, name in enumerate(HOSPITALS):
        write_hospital(tmp_path / "data" / name, seed, train=20, val=10,
                       folders=(folders or {}).get(name, ("NORMAL", "PNEUMONIA")))
        arguments += ["--hospital", f"{name}=folder:{tmp_path / 'data' / name}"]
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "scripts.consortium", "--run-dir", str(tmp_path / "run"), "--architecture", "tiny-gn",
         "--image-size", "32", "--rounds", "1", "--record-epsilon", "0", "--timeout", "600", *arguments, *extra],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})
    return result, time.monotonic() - started


def test_a_misspelled_class_folder_ends_the_run_at_once_naming_the_hospital_and_the_folder(tmp_path: Path) -> None:
    result, seconds = _launch(tmp_path, "--class-names", "NORMAL,PNEUMONIA",
                              folders={"north": ("NORMAL", "PNUEMONIA")})
    out = result.stdout + result.stderr
    assert result.returncode != 0 and seconds < 60, (seconds, out[-3000:])
    reason = [line for line in out.splitlines() if line.startswith("hospital north stopped")]
    assert reason, out[-3000:]
    assert "PNUEMONIA" in reason[0] and "PNEUMONIA" in reason[0], reason  # the folder, and the name it should be
    assert "Traceback" not in result.stdout


def test_hospitals_whose_folders_differ_are_refused_before_anything_starts(tmp_path: Path) -> None:
    """Without --class-names the names come from the hospitals' folders, and only when they agree: a lowercase
    `normal` at one hospital would otherwise make it, if it joined first, decide the labels for all."""
    result, seconds = _launch(tmp_path, folders={"city": ("normal", "PNEUMONIA")})
    assert result.returncode == 2 and seconds < 30, result.stdout[-2000:] + result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert "class folders differ" in error and "city: PNEUMONIA, normal" in error
    assert "st-anna: NORMAL, PNEUMONIA" in error and "--class-names" in error
    assert not (tmp_path / "run" / "logs").exists()  # no service was started


def test_an_unknown_architecture_or_a_bad_setting_ends_at_once_in_one_line(tmp_path: Path) -> None:
    for extra, expected in ((("--architecture", "tinyy"), "invalid choice: 'tinyy'"),
                            (("--rounds", "0"), "--rounds=0: Input should be greater than or equal to 1"),
                            (("--image-size", "8"), "--image-size=8: Input should be greater than or equal to 16")):
        result = subprocess.run([sys.executable, "-m", "scripts.consortium", "--run-dir", str(tmp_path / "run"),
                                 *extra], cwd=REPO, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_the_aggregator_names_the_hospitals_that_did_not_join_in_one_line(tmp_path: Path) -> None:
    """One hospital's folder is missing its class: the node exits, and the aggregator, after its join timeout,
    ends with one line naming it (no traceback)."""
    for seed, name in enumerate(HOSPITALS):
        write_hospital(tmp_path / "data" / name, seed, train=20, val=10,
                       folders=("NORMAL", "PNUEMONIA") if name == "north" else ("NORMAL", "PNEUMONIA"))
    config = ConsortiumConfig(
        run_dir=tmp_path / "run", nodes=3, node_names=list(HOSPITALS), insecure=True,
        settings={"architecture": "tiny-gn", "image_size": 32, "rounds": 1, "encryption_workers": 0,
                  "torch_threads": 1, "class_names": "NORMAL,PNEUMONIA", "log_format": "text", **QUICK_TRAINING},
        aggregator={"join_timeout_seconds": 5, "min_participants": 3},
        node={"record_dp": "off"},
        per_node={i: {"data_source": "folder", "data_path": tmp_path / "data" / name}
                  for i, name in enumerate(HOSPITALS)})
    with Consortium(config) as consortium:
        assert consortium.wait(120) == 1
    reason = last_reason(tmp_path / "run" / "logs" / "aggregator.log")
    assert "not joined: north" in reason and "5 s; 3 needed" in reason, reason
    assert "Traceback" not in (tmp_path / "run" / "logs" / "aggregator.log").read_text()
    assert "PNUEMONIA" in last_reason(tmp_path / "run" / "logs" / "north.log")


def test_a_thin_validation_split_and_skipped_files_are_said_on_the_console(tmp_path: Path) -> None:
    (tmp_path / "data" / "city" / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "data" / "city" / "train" / "NORMAL" / "broken.png").write_bytes(b"not a png")
    result, _ = _launch(tmp_path, "--class-names", "NORMAL,PNEUMONIA")
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    for name in HOSPITALS:  # 5 validation images per class
        assert f"{name}: !!! {name} validates on 10 images (NORMAL: 5, PNEUMONIA: 5)" in out, out[-3000:]
    assert "city: !!! city skipped 1 files (1 unreadable image)" in out
    # Below min_validation_images (20) each hospital counts nothing: the rows' zeros are said to mean nothing, on
    # the console and in the model card (once they printed as an accuracy of 0.000 without a word).
    rows = [line for line in out.splitlines() if line.split()[:1] in (["0"], ["1"], ["2"])]
    assert len(rows) == 3 and all("not meaningful: no validation image counted" in row for row in rows), out[-3000:]
    assert "Not meaningful: no validation image counted" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
