"""`scripts.enroll`: a hospital's request signs under its own name only, and the operator signs nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scripts.enroll import main, request, sign
from scripts.make_certs import make_ca

pytestmark = pytest.mark.unit


def test_the_certificate_names_the_hospital_and_carries_the_key_it_made(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca")
    made = request("st-anna", "St. Anna Hospital", tmp_path / "st-anna")
    assert all(path.stat().st_mode & 0o077 == 0 for path in made.stays)
    certificate = x509.load_pem_x509_certificate(
        sign(tmp_path / "ca", made.sent[0], tmp_path / "back", name="st-anna").read_bytes())
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "st-anna"
    key = serialization.load_pem_private_key((tmp_path / "st-anna" / "tls.key").read_bytes(), password=None)
    assert certificate.public_key() == key.public_key()
    assert (tmp_path / "back" / "ca.pem").read_bytes() == (tmp_path / "ca" / "ca.pem").read_bytes()
    assert not [p for p in (tmp_path / "back").iterdir() if b"PRIVATE KEY" in p.read_bytes()]
    usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]  # a hospital serves no TLS
    with pytest.raises(ValueError, match="already has keys"):  # a second request would replace registered keys
        request("st-anna", "St. Anna Hospital", tmp_path / "st-anna")


def test_a_forged_or_misnamed_request_is_refused(tmp_path: Path) -> None:
    make_ca(tmp_path / "ca")
    made = request("city", "City General", tmp_path / "city")
    forged = made.sent[0].read_bytes().replace(b"A", b"B", 1)  # a changed byte: the signature no longer verifies
    (tmp_path / "forged.csr").write_bytes(forged)
    with pytest.raises(ValueError):
        sign(tmp_path / "ca", tmp_path / "forged.csr", tmp_path / "out", name="city")
    with pytest.raises(ValueError, match="you are enrolling 'north'"):  # city asking for north's certificate
        sign(tmp_path / "ca", made.sent[0], tmp_path / "out", name="north")
    with pytest.raises(ValueError, match="the CA's folder"):
        sign(tmp_path / "ca", made.sent[0], tmp_path / "ca", name="city")
    key = ec.generate_private_key(ec.SECP256R1())
    two_names = [x509.NameAttribute(NameOID.COMMON_NAME, "city"), x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")]
    for attributes, refusal in (([x509.NameAttribute(NameOID.COMMON_NAME, "St Anna")], "lowercase letters"),
                                # A hospital named as a server would get decryptions from the key authority.
                                ([x509.NameAttribute(NameOID.COMMON_NAME, "aggregator")], "reserved"),
                                ([x509.NameAttribute(NameOID.COMMON_NAME, "key-authority")], "reserved"),
                                ([x509.NameAttribute(NameOID.COMMON_NAME, "ca")], "reserved"),  # over ca.pem
                                (two_names, "one common name")):  # some readers take the last CN
        forged_name = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes)).sign(
            key, hashes.SHA256())
        (tmp_path / "bad.csr").write_bytes(forged_name.public_bytes(serialization.Encoding.PEM))
        with pytest.raises(ValueError, match=refusal):
            sign(tmp_path / "ca", tmp_path / "bad.csr", tmp_path / "out", name=str(attributes[-1].value))
    assert not (tmp_path / "out").exists()
    assert main(["request", "--name", "St Anna", "--out", str(tmp_path / "x")]) == 2
