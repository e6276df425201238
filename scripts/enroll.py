"""Enroll a hospital without its private keys ever leaving it: the hospital makes its keys and a certificate
signing request; the consortium operator signs the request with the consortium CA and sends back certificates only.

At the hospital:

    python -m scripts.enroll request --name st-anna --display-name "St. Anna Hospital" --out /etc/fedxray/keys

writes, into --out: tls.key (its TLS key, mode 0600), st-anna.key and st-anna.x25519.key (its upload-signing and
mask-agreement keys, 0600), which never leave the hospital; and st-anna.csr, st-anna.pub and st-anna.x25519.pub,
which it sends to the operator.

At the operator, who holds the CA (scripts.make_certs made it):

    python -m scripts.enroll sign --ca-dir deploy/certs --request st-anna.csr --out outgoing/st-anna

checks the request's signature and name, and writes st-anna.pem (the hospital's certificate, common name st-anna)
and ca.pem into --out, to send back. The operator adds the hospital's two .pub files to the consortium's
public-keys/ folder, which the aggregator and key authority read.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from scripts.make_certs import NAME, certify
from services.common.protocol.node_identity import AGREEMENT, generate_identity
from services.common.runtime.atomic_files import write_atomic
from services.common.runtime.tls import AGGREGATOR_NAME, KEY_AUTHORITY_NAME

TLS_KEY = "tls.key"


@dataclass(frozen=True)
class Request:
    """What a hospital made: the files that stay, and those it sends."""

    stays: tuple[Path, ...]
    sent: tuple[Path, ...]


def request(name: str, display_name: str, out: Path) -> Request:
    """A hospital's keys and its certificate signing request, all made in `out`."""
    if not NAME.fullmatch(name) or name in (AGGREGATOR_NAME, KEY_AUTHORITY_NAME):
        raise ValueError(f"hospital id {name!r}: use lowercase letters, digits and '-' (a DNS-safe id; "
                         "--display-name takes any text), and not a server's name")
    key = ec.generate_private_key(ec.SECP256R1())
    write_atomic(out / TLS_KEY, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()), mode=0o600)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, display_name),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    write_atomic(out / f"{name}.csr", csr.public_bytes(serialization.Encoding.PEM))
    identity = generate_identity(out, name)
    return Request(stays=(out / TLS_KEY, identity, out / f"{name}{AGREEMENT}.key"),
                   sent=(out / f"{name}.csr", out / f"{name}.pub", out / f"{name}{AGREEMENT}.pub"))


def sign(ca_dir: Path, request_path: Path, out: Path) -> Path:
    """The operator's side: the certificate for a checked request, and the CA certificate, written to `out`."""
    csr = x509.load_pem_x509_csr(request_path.read_bytes())
    if not csr.is_signature_valid:
        raise ValueError(f"{request_path}: the request's signature does not verify")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = str(names[0].value) if names else ""
    if not NAME.fullmatch(name):
        raise ValueError(f"{request_path}: common name {name!r} is not a hospital id (lowercase letters, digits, '-')")
    if name in (AGGREGATOR_NAME, KEY_AUTHORITY_NAME):
        # A certificate's name is its holder's identity: a hospital named `aggregator` could ask for decryptions.
        raise ValueError(f"{request_path}: {name!r} is the name of a server, not a hospital's")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{request_path}: expected an elliptic-curve key")
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    certificate = certify(name, public_key, ca, ca_key, subject=csr.subject)
    write_atomic(out / f"{name}.pem", certificate.public_bytes(serialization.Encoding.PEM))
    write_atomic(out / "ca.pem", (ca_dir / "ca.pem").read_bytes())
    return out / f"{name}.pem"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.enroll", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = parser.add_subparsers(dest="step", required=True)
    made = steps.add_parser("request", help="at the hospital: keys and a certificate signing request")
    made.add_argument("--name", required=True, help="the hospital's id: lowercase letters, digits, '-'")
    made.add_argument("--display-name", default=None, help="the hospital's name as people write it")
    made.add_argument("--out", type=Path, required=True, help="the hospital's own key folder")
    signing = steps.add_parser("sign", help="at the operator: the hospital's certificate from its request")
    signing.add_argument("--ca-dir", type=Path, required=True, help="holds ca.pem and ca.key")
    signing.add_argument("--request", type=Path, required=True, help="the hospital's .csr")
    signing.add_argument("--out", type=Path, required=True, help="where to write what goes back")
    args = parser.parse_args(argv)
    try:
        if args.step == "request":
            done = request(args.name, args.display_name or args.name, args.out)
            print("never leave this hospital (mode 0600): " + " ".join(map(str, done.stays)))
            print("send to the consortium operator: " + " ".join(map(str, done.sent)))
        else:
            certificate = sign(args.ca_dir, args.request, args.out)
            print(f"send back to the hospital: {certificate} {args.out / 'ca.pem'}")
    except (OSError, ValueError) as error:
        print(f"python -m scripts.enroll: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
