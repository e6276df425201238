"""checkov's policy scan of every rendered Kubernetes overlay: no failed check, except the exceptions written down
with their reasons in deploy/k8s/checkov.yaml. checkov runs from its own virtual environment (.venv-checkov, made by
`make test`); its findings come from its own rule set, not from this project's tests."""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_k8s import render

pytestmark = [pytest.mark.unit, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
CONFIG = REPO / "deploy" / "k8s" / "checkov.yaml"
OVERLAYS = ("consortium", "hospital", "hospital-gpu", "monitoring", "monitoring-operator")


def scan(folder: Path) -> list[dict[str, Any]]:
    assert CHECKOV.exists(), f"{CHECKOV} is missing: `make test` installs it (deploy/k8s/requirements-checkov.txt)"
    result = subprocess.run([str(CHECKOV), "--config-file", str(CONFIG), "-d", str(folder), "-o", "json"],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip(), result.stderr[-2000:]
    reports = json.loads(result.stdout)
    return reports if isinstance(reports, list) else [reports]


def failures(reports: list[dict[str, Any]]) -> list[str]:
    return [f"{check['check_id']} {check['check_name']}: {check['resource']} ({check['file_path']})"
            for report in reports for check in report["results"]["failed_checks"]]


def write(folder: Path, overlay: str, docs: list[dict[str, Any]]) -> None:
    (folder / f"{overlay}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))


def test_checkov_finds_nothing_in_any_overlay(tmp_path: Path) -> None:
    for overlay in OVERLAYS:
        write(tmp_path, overlay, render(overlay))
    reports = scan(tmp_path)
    assert failures(reports) == []
    passed = sum(report["summary"]["passed"] for report in reports)
    assert passed > 300, f"only {passed} checks passed: did checkov read the manifests?"


def test_checkov_flags_a_privileged_root_pod(tmp_path: Path) -> None:
    """The scan is live: the consortium with its key authority made privileged, root and writable fails it."""
    docs = render("consortium")
    broken = copy.deepcopy(docs)
    for doc in broken:
        if doc["kind"] == "StatefulSet" and doc["metadata"]["name"] == "key-authority":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["securityContext"] = {"privileged": True, "runAsUser": 0, "allowPrivilegeEscalation": True}
            container["image"] = "fedxray-key-authority:latest"
    write(tmp_path, "consortium", broken)
    found = {line.split()[0] for line in failures(scan(tmp_path))}
    assert {"CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_14"} <= found, found  # privileged, escalation, the latest tag


def test_every_exception_gives_its_reason() -> None:
    skipped = yaml.safe_load(CONFIG.read_text())["skip-check"]
    text = CONFIG.read_text()
    for check in skipped:
        before = text[:text.index(f"- {check}")]
        assert f"# {check} " in before, f"{check} is skipped without a reason in {CONFIG}"
