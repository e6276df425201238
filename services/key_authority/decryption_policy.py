"""When the key authority decrypts: the policy and its persistent ledger.

A sum is decrypted only if its manifest names the current key; its participant set S
has at least `min_participants` and at most n_max distinct registered members; every
member of S, and no one else, attested this round attempt, this set, this key, this
layout and this exact size (value count, chunk count, ciphertexts per chunk), with a
signature that verifies; the size is the one the key's layout requires; no attempt
of its round was ever decrypted under this key; and every member trained on one model,
on which no sum of another participant set was decrypted (two sets' sums on one model
would differ by the updates of the members in one of them only). Pairwise masks cancel only over the
whole of S, so the sum of any other selection of uploads decrypts to uniform noise.
The ledger entry is written and fsynced before decryption starts, so a crash can waste
a round but never decrypt one twice.
"""

from __future__ import annotations

import threading
from pathlib import Path

from services.common.errors import AlreadyDecryptedError, MalformedChunkError, PolicyViolationError, WrongKeyError
from services.common.protocol.chunking import upload_chunk_count
from services.common.protocol.node_identity import NodeKeyRegistry
from services.common.protocol.upload import DecryptManifest
from services.common.runtime.atomic_files import read_json, write_json_atomic
from services.common.secure_sum.pairwise_masks import participant_set_hash
from services.key_authority.key_store import KeyMaterial


def _entry(key_id: str, round_id: int) -> str:
    return f"{key_id}:{round_id}"


def _model_entry(key_id: str, model_digest: bytes) -> str:
    return f"{key_id}:{model_digest.hex()}"


class DecryptionLedger:
    """The rounds already decrypted, by key id and round (any attempt), and the participant set each model's sum was
    decrypted for, persisted as JSON (an older ledger, a list of rounds, reads as rounds only)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        stored = read_json(path)
        if isinstance(stored, dict):
            self._entries: set[str] = set(stored.get("rounds", []))
            self._models: dict[str, str] = dict(stored.get("models", {}))
        else:
            self._entries, self._models = set(stored or []), {}

    def rounds(self, key_id: str) -> frozenset[int]:
        prefix = f"{key_id}:"
        return frozenset(int(e[len(prefix):]) for e in self._entries if e.startswith(prefix))

    def require_unspent(self, key_id: str, round_id: int) -> None:
        if _entry(key_id, round_id) in self._entries:
            raise AlreadyDecryptedError(f"round {round_id} was already decrypted under key {key_id}; each round is "
                                        "decrypted once, whatever its attempt")

    def require_one_set_per_model(self, key_id: str, model_digest: bytes, set_hash: bytes) -> None:
        """Two participant sets' sums on one model differ by the updates of the members in one set only: the
        aggregator could isolate a hospital by differencing them, across rounds. One set per model, then."""
        earlier = self._models.get(_model_entry(key_id, model_digest))
        if earlier is not None and earlier != set_hash.hex():
            raise PolicyViolationError(
                f"the model {model_digest.hex()[:16]} was already decrypted for another participant set: sums of two "
                "sets on one model would isolate the members in one of them, so the key authority decrypts one "
                "participant set per model")

    def claim(self, key_id: str, round_id: int, model_digest: bytes = b"", set_hash: bytes = b"") -> None:
        self.require_unspent(key_id, round_id)
        models = dict(self._models)
        if model_digest:
            self.require_one_set_per_model(key_id, model_digest, set_hash)
            models[_model_entry(key_id, model_digest)] = set_hash.hex()
        entries = self._entries | {_entry(key_id, round_id)}
        # Durable before any decryption starts: a crash can waste a round, never decrypt it twice.
        write_json_atomic(self._path, {"rounds": sorted(entries), "models": models})
        self._entries, self._models = entries, models


class DecryptionPolicy:
    def __init__(self, keys: KeyMaterial, min_participants: int, registry: NodeKeyRegistry,
                 ledger: DecryptionLedger) -> None:
        self._keys = keys
        self._min_participants = min_participants
        self._registry = registry
        self._ledger = ledger
        self._lock = threading.Lock()

    @property
    def decrypted_rounds(self) -> frozenset[int]:
        return self._ledger.rounds(self._keys.key_id)

    def check(self, manifest: DecryptManifest) -> None:
        """Raise the named refusal, or return: the manifest may be decrypted once its chunks pass."""
        keys = self._keys
        if manifest.key_id != keys.key_id:
            raise WrongKeyError(f"manifest names key {manifest.key_id!r}; the current key is {keys.key_id!r}")
        members = set(manifest.participants)
        if len(members) != len(manifest.participants):
            raise PolicyViolationError("the manifest's participant set names a node twice")
        if not self._min_participants <= len(members) <= keys.layout.max_participants:
            raise PolicyViolationError(
                f"round {manifest.round_id} has {len(members)} participants; the policy requires between "
                f"{self._min_participants} and n_max = {keys.layout.max_participants}")
        attested = [claim.node_id for claim in manifest.attestations]
        if sorted(attested) != sorted(members):
            raise PolicyViolationError(
                f"round {manifest.round_id} attempt {manifest.attempt}: attestations from {sorted(attested)}, but "
                f"the participant set is {sorted(members)}; every member, and no one else, must attest")
        layout = keys.layout_for(manifest.layout)
        if manifest.value_count < 1 or manifest.chunk_ciphertexts < 1 or manifest.chunk_count != upload_chunk_count(
                manifest.value_count, layout, keys.params.slots, manifest.chunk_ciphertexts):
            raise MalformedChunkError(
                f"{manifest.value_count} values in chunks of {manifest.chunk_ciphertexts} ciphertexts are not "
                f"{manifest.chunk_count} chunks in this key's {manifest.layout.name.lower()} layout")
        set_hash = participant_set_hash(manifest.participants)
        expected = (manifest.round_id, manifest.attempt, manifest.key_id, manifest.chunk_count, manifest.value_count,
                    manifest.chunk_ciphertexts, manifest.layout, set_hash, manifest.plan_digest)
        for claim in manifest.attestations:
            if (claim.round_id, claim.attempt, claim.key_id, claim.chunk_count, claim.value_count,
                    claim.chunk_ciphertexts, claim.layout, claim.participant_set, claim.plan_digest) != expected:
                raise PolicyViolationError(f"attestation of {claim.node_id!r} is for another round, attempt, key, "
                                           "size, layout, participant set or plan")
            self._registry.verify(claim.node_id, claim.signed_message(), claim.signature)
        self._ledger.require_unspent(manifest.key_id, manifest.round_id)
        self._ledger.require_one_set_per_model(manifest.key_id, self._model_of(manifest), set_hash)

    @staticmethod
    def _model_of(manifest: DecryptManifest) -> bytes:
        """The model every member attests it trained on: one, named (SHA-256)."""
        models = {claim.model_digest for claim in manifest.attestations}
        if len(models) != 1 or len(next(iter(models))) != 32:
            raise PolicyViolationError(f"round {manifest.round_id}: the attestations name {len(models)} models "
                                       "(each must name the one model its sum was trained on)")
        return next(iter(models))

    def claim(self, manifest: DecryptManifest) -> None:
        """Record the round as decrypted; refuses a second claim of any attempt of it."""
        with self._lock:
            self._ledger.claim(manifest.key_id, manifest.round_id, self._model_of(manifest),
                               participant_set_hash(manifest.participants))
