"""Make the consortium CA and a certificate for every service: `python -m scripts.make_certs`.

Writes into --out: ca.pem (and ca.key, keep it offline), key-authority.{pem,key},
aggregator.{pem,key}, and hospital-N.{pem,key} for each node, plus each node's
Ed25519 upload-signing key and X25519 mask-agreement key under identities/, and
their public halves alone under public-keys/. Private keys are mode 0600.
A certificate's common name is the party's identity: the aggregator takes the node
id from it, and the key authority decrypts only for the `aggregator` name.
"""

from __future__ import annotations

import argparse
import datetime
import re
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.protocol.node_identity import generate_identity
from services.common.runtime.atomic_files import write_atomic
from services.common.runtime.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME

VALID_DAYS = 825
NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # a hospital's id: DNS-safe, it names its certificate
# Names no hospital may take: the servers' (a certificate's name is its holder's identity), and those of files in
# the folders that hold a hospital's keys or the CA's (ca.pem, tls.key), and localhost.
RESERVED = frozenset({AGGREGATOR_NAME, KEY_AUTHORITY_NAME, "ca", "tls", "localhost"})


def hospital_id_problem(name: str) -> str | None:
    """Why `name` cannot be a hospital's id, or None."""
    if not NAME.fullmatch(name):
        return f"hospital id {name!r}: use lowercase letters, digits and '-' (a DNS-safe id)"
    if name in RESERVED:
        return f"hospital id {name!r} is reserved ({', '.join(sorted(RESERVED))})"
    return None


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()), mode=0o600)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedXray consortium"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(out: Path, common_name: str = "FedXray consortium CA") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name)).issuer_name(_name(common_name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write_key(out / "ca.key", key)
    return cert, key


def issue(out: Path, name: str, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey) -> None:
    """A key and a certificate for `name`, both made here: for the servers, and the local consortium's nodes (a
    hospital of a real consortium makes its own key: `scripts.enroll`)."""
    key = ec.generate_private_key(ec.SECP256R1())
    write_atomic(out / f"{name}.pem", certify(name, key.public_key(), ca, ca_key).public_bytes(
        serialization.Encoding.PEM))
    _write_key(out / f"{name}.key", key)


def certify(name: str, public_key: ec.EllipticCurvePublicKey, ca: x509.Certificate,
            ca_key: ec.EllipticCurvePrivateKey, *, subject: x509.Name | None = None,
            server: bool = True) -> x509.Certificate:
    """The CA's certificate for `public_key` under the common name `name` (the party's identity), `name` as its
    DNS name; client use, and server use unless `server` is False (a hospital serves no TLS)."""
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server else [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder().subject_name(subject or _name(name)).issuer_name(ca.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .sign(ca_key, hashes.SHA256()))


def make_consortium_certs(out: Path, node_ids: list[str]) -> None:
    ca, ca_key = make_ca(out)
    for name in (KEY_AUTHORITY_NAME, AGGREGATOR_NAME, *node_ids):
        issue(out, name, ca, ca_key)
    for node_id in node_ids:
        if not (out / "identities" / f"{node_id}.key").exists():
            generate_identity(out / "identities", node_id)
    # The public halves alone, for every party to mount: identities/ also holds the members' secrets.
    for public in sorted((out / "identities").glob("*.pub")):
        write_atomic(out / "public-keys" / public.name, public.read_bytes())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scripts.make_certs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("deploy/certs"))
    parser.add_argument("--nodes", type=int, default=5, help="hospital-1 .. hospital-N")
    parser.add_argument("--names", default=None, metavar="A,B,C",
                        help="the hospitals' ids instead of hospital-1 .. hospital-N (lowercase letters, digits, '-'); "
                             "for a local stack only: a real hospital makes its own keys (python -m scripts.enroll)")
    args = parser.parse_args(argv)
    nodes = args.names.split(",") if args.names else [f"hospital-{i + 1}" for i in range(args.nodes)]
    for node in nodes:
        problem = hospital_id_problem(node)
        if problem:
            parser.error(problem)
    make_consortium_certs(args.out, nodes)
    print(f"wrote CA, key-authority, aggregator and {', '.join(nodes)} certificates to {args.out}")


if __name__ == "__main__":
    main()
