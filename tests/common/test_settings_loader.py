"""Settings mistakes a new user makes get one line each that says what to change, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.aggregator.config import AggregatorSettings
from services.common.runtime.settings_loader import SettingsError, describe_settings, load_settings
from services.hospital_node.config import HospitalNodeSettings

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]


def _problems(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line]


def test_a_typo_in_an_environment_variable_is_refused_with_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    """Before: FEDXRAY_AGG_EXPECTED_PARTICIPANT=3 was silently ignored and the setting stayed at 5."""
    with pytest.raises(SettingsError):
        load_settings(AggregatorSettings, "services.aggregator", None, argv=[],
                      environ={"FEDXRAY_AGG_EXPECTED_PARTICIPANT": "3", "FEDXRAY_NODE_OTHER": "x", "HOME": "/"})
    assert _problems(capsys) == ["services.aggregator: settings: unknown setting FEDXRAY_AGG_EXPECTED_PARTICIPANT in "
                                 "the environment: did you mean FEDXRAY_AGG_EXPECTED_PARTICIPANTS?"]


def test_a_typo_in_an_env_file_names_the_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a 15-line pydantic traceback, with no "did you mean"."""
    env = tmp_path / "aggregator.env"
    env.write_text("# comment\nFEDXRAY_AGG_ROUNDS=4\n\nFEDXRAY_AGG_EXPECTED_PARTICIPANT=3\nFEDXRAY_NODE_NODE_ID=x\n")
    with pytest.raises(SettingsError):
        load_settings(AggregatorSettings, "services.aggregator", None, argv=["--config", str(env)], environ={})
    assert _problems(capsys) == [
        f"services.aggregator: settings: {env}:4: unknown setting FEDXRAY_AGG_EXPECTED_PARTICIPANT: did you mean "
        "FEDXRAY_AGG_EXPECTED_PARTICIPANTS?",
        f"services.aggregator: settings: {env}:5: not a FEDXRAY_AGG_* setting: FEDXRAY_NODE_NODE_ID"]


def test_bad_values_give_one_line_each_naming_the_setting_and_the_value(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    env = tmp_path / "node.env"
    env.write_text("FEDXRAY_NODE_NUM_CLASSES=two\nFEDXRAY_NODE_DATA_SOURCE=folders\n")
    for key in [k for k in __import__("os").environ if k.startswith("FEDXRAY_NODE_")]:
        monkeypatch.delenv(key)
    with pytest.raises(SettingsError):
        load_settings(HospitalNodeSettings, "services.hospital_node", None, argv=["--config", str(env)], environ={})
    assert _problems(capsys) == [
        "services.hospital_node: settings: FEDXRAY_NODE_NUM_CLASSES='two': Input should be a valid integer, unable "
        "to parse string as an integer",
        "services.hospital_node: settings: FEDXRAY_NODE_DATA_SOURCE='folders': Input should be 'synthetic', "
        "'folder', 'medmnist' or 'dicom'"]


def test_a_missing_config_file_is_named() -> None:
    with pytest.raises(SettingsError, match="--config /nowhere.env: no such file"):
        load_settings(AggregatorSettings, "services.aggregator", None, argv=["--config", "/nowhere.env"], environ={})


def test_help_describes_every_setting_and_lists_the_choices() -> None:
    text = describe_settings(HospitalNodeSettings)
    for name in HospitalNodeSettings.model_fields:
        entry = text.split(f"FEDXRAY_NODE_{name.upper()}\n", 1)[1].split("\n", 1)[0]
        assert not entry.strip().startswith("default:"), f"{name} has no description"
    assert "one of: synthetic, folder, medmnist, dicom" in text
    assert "one of: iid, dirichlet, label_mix, quantity" in text


def test_the_service_process_exits_with_the_message_and_no_traceback() -> None:
    result = subprocess.run([sys.executable, "-m", "services.aggregator"], cwd=REPO, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "FEDXRAY_AGG_EXPECTED_PARTICIPANT": "3"}, timeout=60)
    assert result.returncode == 1
    assert "did you mean FEDXRAY_AGG_EXPECTED_PARTICIPANTS?" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_text_log_format_is_one_plain_line_per_message(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from services.common.runtime.service_runtime import configure_logging

    configure_logging("aggregator", "INFO", json_logs=False)
    logging.getLogger("services.aggregator.evaluation_board").info("round 2: 5 hospitals, accuracy 0.750")
    line = capsys.readouterr().err.strip()
    assert line.endswith(" aggregator INFO round 2: 5 hospitals, accuracy 0.750") and not line.startswith("{")
    configure_logging("aggregator", "INFO", json_logs=True)
    logging.getLogger("x").info("round 3")
    assert '"msg": "round 3"' in capsys.readouterr().err
    logging.getLogger().handlers.clear()
