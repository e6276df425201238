"""A hospital node that cannot start says why in one line: the real `serve`, with a key file missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.hospital_node.__main__ import main
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.service import serve

pytestmark = pytest.mark.unit


def test_a_missing_identity_key_is_one_line_naming_the_file_and_the_command_that_makes_it(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    settings = HospitalNodeSettings(insecure=True, node_id="st-anna", architecture="tiny", image_size=16,
                                    synthetic_images=60, min_validation_images=1, identity_key=tmp_path / "st-anna.key",
                                    state_dir=tmp_path / "state", aggregator="127.0.0.1:9", key_authority="127.0.0.1:9",
                                    log_format="text")
    assert serve(settings) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err
    [line] = [line for line in err.splitlines() if " ERROR " in line]
    assert str(tmp_path / "st-anna.key") in line and "keygen --out" in line and "--node-id st-anna" in line


def test_keygen_says_which_files_stay_and_which_go_to_the_operator(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--out", str(tmp_path), "--node-id", "st-anna"]) == 0
    private, public = capsys.readouterr().out.splitlines()
    assert private.startswith("private, never leave this hospital") and "st-anna.key" in private
    assert "st-anna.x25519.key" in private and ".pub" not in private
    assert public.startswith("public, send to the consortium operator") and "st-anna.pub" in public
    assert "st-anna.x25519.pub" in public and ".key" not in public
    assert (tmp_path / "st-anna.key").stat().st_mode & 0o077 == 0
