"""A hospital that cannot reach a service, or whose certificate is not the consortium's, is told in one line.

Before: a wrong aggregator address waited for ever with nothing logged; a certificate from another CA ended
after 66 s in a thread traceback with DEADLINE_EXCEEDED, and nothing mentioned TLS.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.launcher import free_port, wait_for_port
from scripts.make_certs import issue, make_ca
from scripts.settings_env import child_environment
from services.common.protocol.node_identity import generate_identity
from services.hospital_node.config import HospitalNodeSettings
from services.key_authority.config import KeyAuthoritySettings

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


def _certificates(folder: Path) -> Path:
    ca, ca_key = make_ca(folder)
    for name in ("key-authority", "aggregator", "hospital-1"):
        issue(folder, name, ca, ca_key)
    return folder


def _run_node(tmp_path: Path, certs: Path, ca: Path, key_authority: str, aggregator: str) -> tuple[int, str, float]:
    """A hospital node process with a small SYNTHETIC set; its exit code, its log and how long it ran."""
    identities = tmp_path / "identities"
    if not (identities / "hospital-1.key").exists():
        generate_identity(identities, "hospital-1")
    settings = HospitalNodeSettings(
        node_id="hospital-1", key_authority=key_authority, aggregator=aggregator, connect_seconds=3,
        identity_key=identities / "hospital-1.key", tls_cert=certs / "hospital-1.pem", tls_key=certs / "hospital-1.key",
        tls_ca=ca, architecture="tiny", image_size=16, synthetic_images=40, partition_parties=1, torch_threads=1,
        encryption_workers=0, state_dir=tmp_path / "hospital")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "services.hospital_node"], cwd=REPO, capture_output=True,
                            text=True, env=child_environment(BASE_ENV, settings), timeout=180)
    return result.returncode, result.stdout + result.stderr, time.monotonic() - started


@pytest.fixture
def key_authority(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real key authority on loopback with the consortium CA's certificate; its address and the CA's folder."""
    certs = _certificates(tmp_path / "consortium")
    identities = tmp_path / "identities"
    generate_identity(identities, "hospital-1")
    address = f"127.0.0.1:{free_port()}"
    settings = KeyAuthoritySettings(listen=address, metrics_port=0, state_dir=tmp_path / "ka", node_keys_dir=identities,
                                    tls_cert=certs / "key-authority.pem", tls_key=certs / "key-authority.key",
                                    tls_ca=certs / "ca.pem")
    process = subprocess.Popen([sys.executable, "-m", "services.key_authority"], cwd=REPO,
                               env=child_environment(BASE_ENV, settings), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(address, 120)
        yield address, certs
    finally:
        process.terminate()
        process.wait(30)


def test_an_unreachable_address_is_retried_with_log_lines_and_given_up_after_connect_seconds(tmp_path: Path) -> None:
    certs = _certificates(tmp_path / "consortium")
    nobody = f"127.0.0.1:{free_port()}"  # bound by no one
    code, log, seconds = _run_node(tmp_path, certs, certs / "ca.pem", nobody, nobody)
    assert code == 1
    assert f"cannot reach key authority at {nobody} (UNAVAILABLE: " in log
    assert "Connection refused); retrying in 1 s" in log
    assert "gave up after 3 s (FEDXRAY_NODE_CONNECT_SECONDS)" in log
    assert "Traceback" not in log
    assert seconds < 60  # bounded: 3 s of retries after start-up, never the old wait for ever


@pytest.mark.parametrize("untrusted", ["server", "client"])
def test_a_certificate_from_another_ca_is_one_line_naming_the_files(
        tmp_path: Path, key_authority: tuple[str, Path], untrusted: str) -> None:
    """server: this hospital's CA did not sign the key authority's certificate. client: the key authority refuses
    this hospital's certificate, signed by another CA."""
    address, consortium = key_authority
    foreign = _certificates(tmp_path / "foreign")
    ca = foreign / "ca.pem" if untrusted == "server" else consortium / "ca.pem"
    code, log, seconds = _run_node(tmp_path, foreign, ca, address, address)
    expected, named = ((f"TLS handshake with the key authority at {address} failed (", f"FEDXRAY_NODE_TLS_CA={ca}")
                       if untrusted == "server" else
                       (f"the key authority at {address} closed the connection during the TLS handshake",
                        f"FEDXRAY_NODE_TLS_CERT={foreign / 'hospital-1.pem'}"))
    lines = [line for line in log.splitlines() if expected in line]
    assert code == 1 and len(lines) == 1, log[-2000:]
    assert named in lines[0]
    assert "Traceback" not in log and "DEADLINE_EXCEEDED" not in log
    assert seconds < 60
