"""When the key authority decrypts: the policy and its persistent ledger.

A sum is decrypted only if its manifest names the current key, carries valid
signed attestations from at least `min_participants` distinct registered nodes,
and its round was never decrypted before. The ledger is written before any
decryption starts, so a crash can waste a round but never decrypt one twice.
"""

from __future__ import annotations

import threading
from pathlib import Path

from services.common.atomic_files import read_json, write_json_atomic
from services.common.errors import AlreadyDecryptedError, PolicyViolationError, WrongKeyError
from services.common.stream_digest import NodeKeyRegistry
from services.common.upload import DecryptManifest


class DecryptionLedger:
    """The set of rounds already decrypted, persisted as JSON."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._rounds: set[int] = set(read_json(path) or [])

    @property
    def rounds(self) -> frozenset[int]:
        return frozenset(self._rounds)

    def claim(self, round_id: int) -> None:
        if round_id in self._rounds:
            raise AlreadyDecryptedError(f"round {round_id} was already decrypted; each round is decrypted once")
        # Durable before any decryption starts: a crash can waste a round, never decrypt it twice.
        write_json_atomic(self._path, sorted(self._rounds | {round_id}))
        self._rounds.add(round_id)


class DecryptionPolicy:
    def __init__(self, key_id: str, min_participants: int, registry: NodeKeyRegistry,
                 ledger: DecryptionLedger) -> None:
        self._key_id = key_id
        self._min_participants = min_participants
        self._registry = registry
        self._ledger = ledger
        self._lock = threading.Lock()

    def authorize(self, manifest: DecryptManifest) -> None:
        """Raise the named refusal, or record the round as decrypted and return."""
        if manifest.key_id != self._key_id:
            raise WrongKeyError(f"manifest names key {manifest.key_id!r}; the current key is {self._key_id!r}")
        valid_nodes: set[str] = set()
        for claim in manifest.attestations:
            if (claim.round_id, claim.key_id, claim.chunk_count, claim.layout) != (
                manifest.round_id, manifest.key_id, manifest.chunk_count, manifest.layout
            ):
                raise PolicyViolationError(f"attestation of {claim.node_id!r} is for another round, key, size or "
                                           "layout")
            self._registry.verify(claim.node_id, claim.signed_message(), claim.signature)
            valid_nodes.add(claim.node_id)
        if len(valid_nodes) < self._min_participants:
            raise PolicyViolationError(
                f"round {manifest.round_id} has {len(valid_nodes)} distinct attested participants; "
                f"the policy requires at least {self._min_participants}"
            )
        with self._lock:
            self._ledger.claim(manifest.round_id)
