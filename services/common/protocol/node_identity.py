"""A consortium member's keys: Ed25519 to sign its uploads' attestations, X25519 to agree on pairwise masks.

Each member keeps `<node>.key` (Ed25519) and `<node>.x25519.key` (X25519), both mode 0600;
every other party holds the public halves, `<node>.pub` and `<node>.x25519.pub`, in one
folder (the consortium's public keys, distributed out of band like the certificates).
The key agreement keys are not taken from the aggregator: an aggregator that handed out
keys of its own could remove the masks.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from services.common.errors import DigestMismatchError, UnknownNodeError
from services.common.runtime.atomic_files import write_atomic

AGREEMENT = ".x25519"


def agreement_key_path(identity_key: Path) -> Path:
    """Where the X25519 key lies beside an Ed25519 identity key `<node>.key`."""
    return identity_key.with_name(identity_key.stem + AGREEMENT + ".key")


def _private_pem(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _public_pem(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate_identity(directory: Path, node_id: str) -> Path:
    """Write both key pairs of `node_id` into `directory` (private halves 0600); return the identity key's path."""
    signing, agreement = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    key_path = directory / f"{node_id}.key"
    write_atomic(key_path, _private_pem(signing), mode=0o600)
    write_atomic(agreement_key_path(key_path), _private_pem(agreement), mode=0o600)
    write_atomic(directory / f"{node_id}.pub", _public_pem(signing.public_key()))
    write_atomic(directory / f"{node_id}{AGREEMENT}.pub", _public_pem(agreement.public_key()))
    return key_path


def load_identity(path: Path) -> Ed25519PrivateKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded


def load_agreement_key(identity_key: Path) -> X25519PrivateKey:
    path = agreement_key_path(identity_key)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"no key-agreement key {path} beside the identity key; make both with "
                                "`python -m services.hospital_node keygen`") from error
    if not isinstance(loaded, X25519PrivateKey):
        raise ValueError(f"{path} is not an X25519 private key")
    return loaded


class NodeKeyRegistry:
    """The members' public keys: `<node>.pub` (Ed25519) and, where present, `<node>.x25519.pub` (X25519)."""

    def __init__(self, keys: dict[str, Ed25519PublicKey],
                 agreement: dict[str, X25519PublicKey] | None = None) -> None:
        self._keys = dict(keys)
        self._agreement = dict(agreement or {})

    @classmethod
    def from_directory(cls, directory: Path) -> NodeKeyRegistry:
        keys: dict[str, Ed25519PublicKey] = {}
        agreement: dict[str, X25519PublicKey] = {}
        for path in sorted(directory.glob("*.pub")):
            loaded = serialization.load_pem_public_key(path.read_bytes())
            if path.stem.endswith(AGREEMENT):
                if not isinstance(loaded, X25519PublicKey):
                    raise ValueError(f"{path} is not an X25519 public key")
                agreement[path.stem.removesuffix(AGREEMENT)] = loaded
            else:
                if not isinstance(loaded, Ed25519PublicKey):
                    raise ValueError(f"{path} is not an Ed25519 public key")
                keys[path.stem] = loaded
        return cls(keys, agreement)

    @property
    def node_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    @property
    def agreement_keys(self) -> dict[str, X25519PublicKey]:
        return dict(self._agreement)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> None:
        key = self._keys.get(node_id)
        if key is None:
            raise UnknownNodeError(f"node {node_id!r} is not a registered consortium member")
        try:
            key.verify(signature, message)
        except InvalidSignature as error:
            raise DigestMismatchError(f"attestation signature of node {node_id!r} does not verify") from error
