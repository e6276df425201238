"""The image's HEALTHCHECK script (`deploy/healthcheck.py`), run outside Docker against a real key authority
process on loopback: healthy while the service answers its health check over mTLS, unhealthy (exit 1, one line)
when the service's address answers nothing. `make compose-test` runs it inside the containers; this catches a
broken script in `make test`, minutes earlier (a changed call signature once left every container unhealthy)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.launcher import free_port, wait_for_port
from scripts.make_certs import issue, make_ca
from scripts.settings_env import child_environment
from services.common.protocol.node_identity import generate_identity
from services.key_authority.config import KeyAuthoritySettings

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _healthcheck(environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "deploy/healthcheck.py"], cwd=REPO, capture_output=True, text=True,
                          env=environment, timeout=60)


def test_the_healthcheck_passes_for_a_serving_key_authority_and_fails_for_a_silent_address(tmp_path: Path) -> None:
    ca, ca_key = make_ca(tmp_path)
    issue(tmp_path, "key-authority", ca, ca_key)
    generate_identity(tmp_path / "identities", "hospital-1")
    settings = KeyAuthoritySettings(listen=f"127.0.0.1:{free_port()}", metrics_port=0, state_dir=tmp_path / "ka",
                                    node_keys_dir=tmp_path / "identities", tls_cert=tmp_path / "key-authority.pem",
                                    tls_key=tmp_path / "key-authority.key", tls_ca=tmp_path / "ca.pem")
    environment = child_environment(BASE_ENV, settings)
    process = subprocess.Popen([sys.executable, "-m", "services.key_authority"], cwd=REPO, env=environment,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(settings.listen, 120)
        serving = _healthcheck(environment)
        assert serving.returncode == 0, serving.stderr
        silent = _healthcheck({**environment, "FEDXRAY_KA_LISTEN": f"127.0.0.1:{free_port()}"})
        assert silent.returncode == 1
        assert silent.stderr.startswith("unhealthy: ") and silent.stderr.count("\n") == 1
    finally:
        process.terminate()
        process.wait(30)
