"""The aggregator of several hospitals does not start without configured class names: otherwise the first hospital
to join would decide them for all (a lowercase `normal` folder once swapped every other hospital's labels)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.aggregator.config import AggregatorSettings
from services.aggregator.service import serve
from services.common.protocol.node_identity import generate_identity

pytestmark = pytest.mark.unit


def test_several_hospitals_and_no_class_names_is_refused_at_start_saying_what_to_set(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    for node in ("st-anna", "city"):
        generate_identity(tmp_path / "keys", node)
    settings = AggregatorSettings(insecure=True, architecture="tiny", node_keys_dir=tmp_path / "keys",
                                  state_dir=tmp_path / "state", key_authority="127.0.0.1:9", log_format="text",
                                  metrics_port=0)
    assert serve(settings) == 2
    [line] = [line for line in capfd.readouterr().err.splitlines() if " ERROR " in line]
    assert "FEDXRAY_AGG_CLASS_NAMES" in line and "2 hospitals" in line
    assert not (tmp_path / "state" / "rounds.jsonl").exists()
