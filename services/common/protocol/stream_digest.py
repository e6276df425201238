"""The digest of an update stream and a node's signed attestation of it.

The digest binds every chunk to its round, attempt, key, node and position, so a
chunk replayed into another stream, round, attempt or slot changes the digest. The
node signs the digest in its attestation (`services/common/protocol/upload.py`) with its
Ed25519 identity key; the key authority decrypts a sum only when every member of
the participant set has attested.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


class StreamDigest:
    """Running SHA-256 over (round, attempt, key id, node id) and every chunk in order."""

    def __init__(self, round_id: int, key_id: str, node_id: str, attempt: int = 1) -> None:
        self._hash = hashlib.sha256()
        self._hash.update(_frame(struct.pack(">Q", round_id), struct.pack(">I", attempt), key_id.encode(),
                                 node_id.encode()))

    def add_chunk(self, index: int, payloads: Iterable[bytes]) -> None:
        self._hash.update(struct.pack(">I", index))
        for payload in payloads:
            self._hash.update(_frame(payload))

    def digest(self) -> bytes:
        return self._hash.copy().digest()


def _frame(*parts: bytes) -> bytes:
    return b"".join(struct.pack(">Q", len(part)) + part for part in parts)


def sign_attestation(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)
