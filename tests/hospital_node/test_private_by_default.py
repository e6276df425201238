"""Record-level DP-SGD is the default wherever a hospital's own images are used; off is an explicit setting that
no aggregator proposal can turn back on, and that contradicts a target."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.protocol.round_plan import LocalTrainingPlan
from services.hospital_node.config import DEFAULT_RECORD_EPSILON, HospitalNodeSettings, TrainingSettings
from services.hospital_node.local_round import record_target

pytestmark = pytest.mark.unit


def _plan(record_epsilon: float = 0.0) -> LocalTrainingPlan:
    return LocalTrainingPlan(1, 0.01, 16, "sgd", 0.0, False, record_epsilon)


def _settings(**values: object) -> HospitalNodeSettings:
    return HospitalNodeSettings(insecure=True, **values)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ["folder", "medmnist", "dicom"])
def test_own_images_get_record_level_dp_unless_told_otherwise(source: str) -> None:
    settings = _settings(data_source=source, data_path="/data")
    assert settings.record_epsilon == DEFAULT_RECORD_EPSILON == 8.0
    target = record_target(_plan(), TrainingSettings.of(settings), train_images=500)
    assert target is not None and target.epsilon == 8.0
    # The hospital's own target wins over the default and over any proposal.
    assert _settings(data_source=source, data_path="/data", record_epsilon=2.0).record_epsilon == 2.0


def test_synthetic_data_follows_the_aggregators_proposal() -> None:
    settings = _settings(data_source="synthetic")
    assert settings.record_epsilon is None
    assert record_target(_plan(), TrainingSettings.of(settings), 500) is None
    proposed = record_target(_plan(4.0), TrainingSettings.of(settings), 500)
    assert proposed is not None and proposed.epsilon == 4.0


def test_off_is_explicit_and_no_proposal_turns_it_back_on() -> None:
    settings = _settings(data_source="folder", data_path="/data", record_dp="off")
    assert settings.record_epsilon is None
    assert record_target(_plan(4.0), TrainingSettings.of(settings), 500) is None


def test_off_beside_a_target_is_refused_naming_both() -> None:
    with pytest.raises(ValidationError, match="record_dp=off .* record_epsilon=8"):
        _settings(data_source="folder", data_path="/data", record_dp="off", record_epsilon=8.0)
