"""Hospitals enroll by request: each makes its own TLS key, identity keys and certificate signing request under
its own name; the operator signs the request and sends back certificates only (`scripts.enroll`, through the
launcher's `enrollment="request"`). The consortium then runs a secure round over mTLS, and no hospital's private
key is ever written outside that hospital's folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.consortium_checks import run_to_completion, tiny_config

pytestmark = pytest.mark.e2e
HOSPITALS = ["st-anna", "city", "north"]


def test_named_hospitals_enroll_by_request_and_their_private_keys_never_leave_them(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, 3, 1, images_per_node=30, seed=3, node_names=HOSPITALS, enrollment="request")
    consortium = run_to_completion(config)
    rows = consortium.rows()
    assert any(int(str(row["round"])) == 1 and not row.get("failed") for row in rows), rows
    private = [path for path in tmp_path.rglob("*") if path.is_file() and b"PRIVATE KEY" in path.read_bytes()]
    for name in HOSPITALS:
        own = tmp_path / "hospitals" / name / "keys"
        assert {p.name for p in private if p.is_relative_to(own)} == {"tls.key", f"{name}.key", f"{name}.x25519.key"}
        # Everywhere else, nothing of it: its name on no other private file, and no other folder holds its keys.
        assert not [p for p in private if name in p.name and not p.is_relative_to(own)]
        assert {p.name for p in own.iterdir() if p.suffix == ".pem"} == {f"{name}.pem", "ca.pem"}  # what came back
    # The operator's folder holds the CA and the servers' keys only; the servers read the hospitals' public halves.
    assert {p.name for p in private if p.is_relative_to(tmp_path / "certs")} == {"ca.key", "key-authority.key",
                                                                               "aggregator.key"}
    assert sorted(p.name for p in (tmp_path / "public-keys").iterdir()) == sorted(
        [f"{n}.pub" for n in HOSPITALS] + [f"{n}.x25519.pub" for n in HOSPITALS])
    assert not [p for p in private if p.is_relative_to(tmp_path / "public-keys")]
    assert not (tmp_path / "identities").exists()
