"""The services' defaults are the recipe docs/RESULTS.md found to learn, and so are the env templates.

A first run on a hospital's own images uses whatever the services default to; before these
defaults, that run predicted one class for everything (F1 0). The recipe, as docs/RESULTS.md
records it: AdamW at 3e-4, 10 local epochs a round, logit adjustment for each hospital's class
imbalance, clip norm 20, FedAvgM server momentum 0.5, and the closing head refit when
record-level DP is off (DP-SGD does not cover the refit's feature statistics).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.aggregator.config import AggregatorSettings
from services.hospital_node.config import HospitalNodeSettings

pytestmark = pytest.mark.unit
ENV_DIR = Path(__file__).resolve().parents[2] / "deploy" / "env"
RECIPE = {"local_optimizer": "adamw", "learning_rate": 3e-4, "local_epochs": 10, "clip_norm": 20.0,
          "server_optimizer": "fedavg", "server_momentum": 0.5, "head_refit": True}


@pytest.fixture(autouse=True)
def no_fedxray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEDXRAY_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize("env_file", [None, ENV_DIR / "aggregator.env"], ids=["defaults", "env template"])
def test_the_aggregator_trains_with_the_recipe(env_file: Path | None) -> None:
    settings = AggregatorSettings(_env_file=env_file) if env_file else AggregatorSettings(insecure=True)
    assert {key: getattr(settings, key) for key in RECIPE} == RECIPE


@pytest.mark.parametrize("env_file", [None, ENV_DIR / "hospital-node.env"], ids=["defaults", "env template"])
def test_hospitals_adjust_logits_for_their_class_imbalance(env_file: Path | None) -> None:
    settings = HospitalNodeSettings(_env_file=env_file) if env_file else HospitalNodeSettings(insecure=True)
    assert settings.imbalance == "logit_adjust"


def test_the_head_refit_is_off_by_default_under_record_level_dp_and_refused_when_asked_for() -> None:
    assert AggregatorSettings(insecure=True, record_epsilon=8.0).head_refit is False
    assert AggregatorSettings(insecure=True, head_refit=False).head_refit is False
    with pytest.raises(ValidationError, match="does not cover the head refit"):
        AggregatorSettings(insecure=True, record_epsilon=8.0, head_refit=True)
