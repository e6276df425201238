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


def test_the_aggregator_trains_with_the_recipe() -> None:
    settings = AggregatorSettings(insecure=True)
    assert {key: getattr(settings, key) for key in RECIPE} == RECIPE


def test_the_aggregator_template_proposes_what_hospitals_do_by_default_on_their_own_images() -> None:
    """The per-host templates are for hospitals' own images, which train under record-level DP-SGD by default: the
    aggregator proposes the same target, so the head refit, which DP-SGD does not cover, is off."""
    settings = AggregatorSettings(_env_file=ENV_DIR / "aggregator.env")
    node = HospitalNodeSettings(_env_file=ENV_DIR / "hospital-node.env")
    assert settings.record_epsilon == node.record_epsilon == 8.0
    assert {key: getattr(settings, key) for key in RECIPE} == {**RECIPE, "head_refit": False}


@pytest.mark.parametrize("env_file", [None, ENV_DIR / "hospital-node.env"], ids=["defaults", "env template"])
def test_hospitals_adjust_logits_for_their_class_imbalance(env_file: Path | None) -> None:
    settings = HospitalNodeSettings(_env_file=env_file) if env_file else HospitalNodeSettings(insecure=True)
    assert settings.imbalance == "logit_adjust"


def test_the_head_refit_is_off_by_default_under_record_level_dp_and_refused_when_asked_for() -> None:
    assert AggregatorSettings(insecure=True, record_epsilon=8.0).head_refit is False
    assert AggregatorSettings(insecure=True, head_refit=False).head_refit is False
    with pytest.raises(ValidationError, match="does not cover the head refit"):
        AggregatorSettings(insecure=True, record_epsilon=8.0, head_refit=True)


def test_frozen_batchnorm_trains_part_of_the_model_and_starts_from_weights(tmp_path: Path) -> None:
    weights = tmp_path / "resnet50-imagenet.pt"
    with pytest.raises(ValidationError, match="frozen .* set trainable to head or last_block"):
        AggregatorSettings(insecure=True, architecture="resnet50-bn-frozen", init_weights=weights)
    with pytest.raises(ValidationError, match="set init_weights"):
        AggregatorSettings(insecure=True, architecture="resnet50-bn-frozen", trainable="head")
    for trainable in ("head", "last_block"):
        settings = AggregatorSettings(insecure=True, architecture="resnet50-bn-frozen", trainable=trainable,
                                      init_weights=weights)
        assert settings.trainable == trainable


def test_compose_overrides_the_templates_proposal_with_zero_for_the_synthetic_demo(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """docker-compose.yml sets FEDXRAY_AGG_RECORD_EPSILON=0 over the template's 8: no proposal, so the refit runs."""
    monkeypatch.setenv("FEDXRAY_AGG_RECORD_EPSILON", "0")
    settings = AggregatorSettings(_env_file=ENV_DIR / "aggregator.env")
    assert settings.record_epsilon is None and settings.head_refit is True
    compose = (ENV_DIR.parent / "docker-compose.yml").read_text()
    assert "FEDXRAY_AGG_RECORD_EPSILON: ${FEDXRAY_RECORD_EPSILON:-0}" in compose
