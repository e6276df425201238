"""The per-host env files of deploy/env/ load with each service's own settings class.

They are what one host per service uses (`--config FILE`, or compose's mounted file),
so an unknown or misspelt key would stop that service at start: settings refuse
unknown keys. They must also keep mTLS on and listen beyond loopback.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.aggregator.config import AggregatorSettings
from services.hospital_node.config import HospitalNodeSettings
from services.key_authority.config import KeyAuthoritySettings

ENV_DIR = Path(__file__).resolve().parents[2] / "deploy" / "env"
SETTINGS = {"key-authority.env": KeyAuthoritySettings, "aggregator.env": AggregatorSettings,
            "hospital-node.env": HospitalNodeSettings}
pytestmark = pytest.mark.unit  # files and settings models only: no Docker


@pytest.fixture(autouse=True)
def no_fedxray_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FEDXRAY_"):
            monkeypatch.delenv(name)


def test_there_is_one_env_file_per_service() -> None:
    assert sorted(path.name for path in ENV_DIR.glob("*.env")) == sorted(SETTINGS)


@pytest.mark.parametrize("file_name", sorted(SETTINGS))
def test_env_file_loads_with_mtls_on(file_name: str) -> None:
    settings = SETTINGS[file_name](_env_file=ENV_DIR / file_name)
    assert not settings.insecure
    assert settings.tls_cert and settings.tls_key and settings.tls_ca
    assert str(settings.tls_ca).startswith("/etc/fedxray/certs/")


@pytest.mark.parametrize("file_name", ["key-authority.env", "aggregator.env"])
def test_servers_listen_on_every_interface_and_expose_metrics(file_name: str) -> None:
    settings = SETTINGS[file_name](_env_file=ENV_DIR / file_name)
    assert settings.listen.startswith("0.0.0.0:")
    assert settings.metrics_host == "0.0.0.0" and settings.metrics_port > 0


def test_node_and_aggregator_files_agree_on_the_model() -> None:
    aggregator = AggregatorSettings(_env_file=ENV_DIR / "aggregator.env")
    node = HospitalNodeSettings(_env_file=ENV_DIR / "hospital-node.env")
    assert (node.architecture, node.num_classes, node.model_seed, node.class_names) == \
        (aggregator.architecture, aggregator.num_classes, aggregator.model_seed, aggregator.class_names)
    assert aggregator.class_names is not None  # configured, not raced: the aggregator refuses to start without
    assert node.metrics_host == "0.0.0.0" and node.metrics_port > 0


def test_a_hospital_on_its_own_images_is_private_by_default() -> None:
    """The per-host file reads a hospital's folder, so record-level DP-SGD is on without a line saying so."""
    node = HospitalNodeSettings(_env_file=ENV_DIR / "hospital-node.env")
    assert node.data_source != "synthetic" and node.record_dp == "auto" and node.record_epsilon == 8.0
