"""Enroll a hospital without its private keys ever leaving it: the hospital makes its keys and a certificate
signing request; the consortium operator signs the request with the consortium CA and sends back certificates only.

At the hospital:

    python -m scripts.enroll request --name st-anna --display-name "St. Anna Hospital" --out /etc/fedxray/keys

writes, into --out: tls.key (its TLS key, mode 0600), st-anna.key and st-anna.x25519.key (its upload-signing and
mask-agreement keys, 0600), which never leave the hospital; and st-anna.csr, st-anna.pub and st-anna.x25519.pub,
which it sends to the operator.

At the operator, who holds the CA (scripts.make_certs made it):

    python -m scripts.enroll sign --ca-dir deploy/certs --request st-anna.csr --name st-anna --out outgoing/st-anna

checks the request's signature, that it asks for the hospital being enrolled and nothing else, and
writes st-anna.pem (the hospital's certificate, common name st-anna)
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

from scripts.make_certs import certify, hospital_id_problem
from services.common.protocol.node_identity import AGREEMENT, generate_identity
from services.common.runtime.atomic_files import write_atomic

TLS_KEY = "tls.key"


@dataclass(frozen=True)
class Request:
    """What a hospital made: the files that stay, and those it sends."""

    stays: tuple[Path, ...]
    sent: tuple[Path, ...]


def request(name: str, display_name: str, out: Path) -> Request:
    """A hospital's keys and its certificate signing request, all made in `out`."""
    problem = hospital_id_problem(name)
    if problem:
        raise ValueError(f"{problem}; --display-name takes any text")
    existing = [path for path in (out / TLS_KEY, out / f"{name}.key", out / f"{name}{AGREEMENT}.key") if path.exists()]
    if existing:  # a second request would replace the keys the consortium registered
        raise ValueError(f"{existing[0]} exists: this hospital already has keys; move them away to make new ones")
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


def sign(ca_dir: Path, request_path: Path, out: Path, *, name: str) -> Path:
    """The operator's side: the certificate for a checked request from hospital `name` (whom the operator is
    enrolling), and the CA certificate, written to `out`."""
    if out.resolve() == ca_dir.resolve():
        raise ValueError(f"--out {out} is the CA's folder: write what goes back elsewhere")
    csr = x509.load_pem_x509_csr(request_path.read_bytes())
    if not csr.is_signature_valid:
        raise ValueError(f"{request_path}: the request's signature does not verify")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    others = [a for a in csr.subject if a.oid not in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME)]
    if len(names) != 1 or others or len(csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)) > 1:
        raise ValueError(f"{request_path}: the subject must be one common name and at most one organization, not "
                         f"{csr.subject.rfc4514_string()!r}")
    requested = str(names[0].value)
    problem = hospital_id_problem(requested)
    if problem:  # a certificate's name is its holder's identity: a hospital named `aggregator` could ask to decrypt
        raise ValueError(f"{request_path}: {problem}")
    if requested != name:
        raise ValueError(f"{request_path} asks for {requested!r}, but you are enrolling {name!r}")
    organizations = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, str(organizations[0].value)
                                            if organizations else name),
                         x509.NameAttribute(NameOID.COMMON_NAME, name)])  # rebuilt from the checked values
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise ValueError(f"{request_path}: expected an elliptic-curve key")
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    try:
        ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), password=None)
    except TypeError as error:
        raise ValueError(f"{ca_dir / 'ca.key'}: {error}") from error
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{ca_dir / 'ca.key'}: expected the consortium CA's elliptic-curve key")
    certificate = certify(name, public_key, ca, ca_key, subject=subject, server=False)
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
    signing.add_argument("--name", required=True, help="the id of the hospital you are enrolling: the request must "
                         "ask for exactly this one")
    signing.add_argument("--out", type=Path, required=True, help="where to write what goes back")
    args = parser.parse_args(argv)
    try:
        if args.step == "request":
            done = request(args.name, args.display_name or args.name, args.out)
            print("never leave this hospital (mode 0600): " + " ".join(map(str, done.stays)))
            print("send to the consortium operator: " + " ".join(map(str, done.sent)))
        else:
            certificate = sign(args.ca_dir, args.request, args.out, name=args.name)
            print(f"send back to the hospital: {certificate} {args.out / 'ca.pem'}")
    except (OSError, ValueError) as error:
        print(f"python -m scripts.enroll: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
