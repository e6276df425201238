"""The digest of an update stream and a node's signed attestation of it.

The digest binds every chunk to its round, key, node and position, so a chunk
replayed into another stream, round or slot changes the digest. The node signs
the digest with its Ed25519 identity key; the key authority decrypts a sum only
when enough distinct nodes' signatures verify.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from services.common.atomic_files import write_atomic
from services.common.errors import DigestMismatchError, UnknownNodeError

ATTESTATION_DOMAIN = b"fedxray.v1/attestation"


class StreamDigest:
    """Running SHA-256 over (round, key id, node id) and every chunk in order."""

    def __init__(self, round_id: int, key_id: str, node_id: str) -> None:
        self._hash = hashlib.sha256()
        self._hash.update(_frame(struct.pack(">Q", round_id), key_id.encode(), node_id.encode()))

    def add_chunk(self, index: int, payloads: Iterable[bytes]) -> None:
        self._hash.update(struct.pack(">I", index))
        for payload in payloads:
            self._hash.update(_frame(payload))

    def digest(self) -> bytes:
        return self._hash.copy().digest()


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def attestation_message(round_id: int, key_id: str, node_id: str, chunk_count: int, digest: bytes,
                        layout: int) -> bytes:
    """What a node signs: its stream's round, key, chunk count, digest and the sum layout it encoded in."""
    return ATTESTATION_DOMAIN + _frame(
        struct.pack(">Q", round_id), key_id.encode(), node_id.encode(), struct.pack(">I", chunk_count), digest,
        struct.pack(">I", layout),
    )


def sign_attestation(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


class NodeKeyRegistry:
    """Public identity keys of the consortium's nodes, one `<node_id>.pub` PEM file each."""

    def __init__(self, keys: dict[str, Ed25519PublicKey]) -> None:
        self._keys = dict(keys)

    @classmethod
    def from_directory(cls, directory: Path) -> NodeKeyRegistry:
        keys: dict[str, Ed25519PublicKey] = {}
        for path in sorted(directory.glob("*.pub")):
            loaded = serialization.load_pem_public_key(path.read_bytes())
            if not isinstance(loaded, Ed25519PublicKey):
                raise ValueError(f"{path} is not an Ed25519 public key")
            keys[path.stem] = loaded
        return cls(keys)

    @property
    def node_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def verify(self, node_id: str, message: bytes, signature: bytes) -> None:
        key = self._keys.get(node_id)
        if key is None:
            raise UnknownNodeError(f"node {node_id!r} is not a registered consortium member")
        try:
            key.verify(signature, message)
        except InvalidSignature as error:
            raise DigestMismatchError(f"attestation signature of node {node_id!r} does not verify") from error


def generate_identity(directory: Path, node_id: str) -> Path:
    """Write `<node_id>.key` (0600) and `<node_id>.pub` into `directory`; return the key path."""
    directory.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    key_path = directory / f"{node_id}.key"
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()), mode=0o600)
    write_atomic(directory / f"{node_id}.pub",
                 key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path


def load_identity(path: Path) -> Ed25519PrivateKey:
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return loaded
