"""When the key authority decrypts: every refusal of its policy, tried as a dishonest aggregator would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.common.errors import (
    AlreadyDecryptedError,
    DigestMismatchError,
    MalformedChunkError,
    PolicyViolationError,
    UnknownNodeError,
    WrongKeyError,
)
from services.common.protocol.node_identity import NodeKeyRegistry, generate_identity, load_identity
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.stream_digest import sign_attestation
from services.common.protocol.upload import Attestation, DecryptManifest
from services.common.secure_sum.pairwise_masks import participant_set_hash
from services.key_authority.decryption_policy import DecryptionLedger, DecryptionPolicy
from services.key_authority.key_store import KeyMaterial, load_or_create_keys

NODES = tuple(f"hospital-{i}" for i in range(1, 11))  # ten registered members; n_max is 8
SET = NODES[:3]
VALUES = 30_000  # three ciphertexts of 4096 slots x 3 fields: one chunk of 4


MODEL = b"m" * 32  # the digest of the model every member trained on


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return load_or_create_keys(8, None, tmp_path_factory.mktemp("ka"), persist=False)


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NodeKeyRegistry]:
    folder = tmp_path_factory.mktemp("identities")
    for node in NODES:
        generate_identity(folder, node)
    return folder, NodeKeyRegistry.from_directory(folder)


def _attestation(folder: Path, key_id: str, node: str, members: tuple[str, ...], signer: str | None = None,
                 **changes: object) -> Attestation:
    unsigned = replace(Attestation(node, 5, key_id, 1, node.encode().ljust(32, b"."), b"", SumLayout.UPDATE, 1,
                                   participant_set_hash(members), VALUES, 4, model_digest=MODEL), **changes)
    return replace(unsigned, signature=sign_attestation(load_identity(folder / f"{signer or node}.key"),
                                                        unsigned.signed_message()))


def _manifest(folder: Path, key_id: str, members: tuple[str, ...] = SET, **changes: object) -> DecryptManifest:
    attestations = tuple(_attestation(folder, key_id, node, members, signer=None if node in NODES else NODES[0])
                         for node in members)
    return replace(DecryptManifest(5, key_id, 1, VALUES, attestations, SumLayout.UPDATE, 1, members, 4), **changes)


def test_an_honest_manifest_is_decrypted_once_whatever_the_attempt_and_the_ledger_survives(  # type: ignore[no-untyped-def]
        keys, identities, tmp_path: Path) -> None:
    folder, registry = identities
    policy = DecryptionPolicy(keys, 3, registry, DecryptionLedger(tmp_path / "ledger.json"))
    policy.check(_manifest(folder, keys.key_id))
    policy.claim(_manifest(folder, keys.key_id))
    assert policy.decrypted_rounds == {5}
    restarted = DecryptionPolicy(keys, 3, registry, DecryptionLedger(tmp_path / "ledger.json"))
    second_attempt = _manifest(folder, keys.key_id, NODES[:4])
    second_attempt = replace(second_attempt, attempt=2, attestations=tuple(
        _attestation(folder, keys.key_id, node, NODES[:4], attempt=2) for node in NODES[:4]))
    with pytest.raises(AlreadyDecryptedError, match="round 5 was already decrypted"):
        restarted.check(second_attempt)  # a new process, the same ledger; another attempt of the same round


def _dishonest(folder: Path, key_id: str, change: str) -> DecryptManifest:
    honest = _manifest(folder, key_id)
    first, *rest = honest.attestations
    nine = NODES[:9]
    return {
        "too few": _manifest(folder, key_id, NODES[:2]),
        "more than n_max": _manifest(folder, key_id, nine),
        "one node three times": replace(honest, participants=(SET[0],) * 3, attestations=(first,) * 3),
        "a member missing its attestation": replace(honest, attestations=tuple(rest)),
        "an outsider's attestation": replace(honest, attestations=(*honest.attestations,
                                                                  _attestation(folder, key_id, NODES[5], SET))),
        "another key": replace(honest, key_id="f" * 16),
        "an attestation of another round": replace(honest, attestations=(
            _attestation(folder, key_id, SET[0], SET, round_id=4), *rest)),
        "an attestation of another attempt": replace(honest, attestations=(
            _attestation(folder, key_id, SET[0], SET, attempt=2), *rest)),
        "an attestation for another set": replace(honest, attestations=(
            _attestation(folder, key_id, SET[0], NODES[:4]), *rest)),
        "an inflated value count": replace(honest, value_count=VALUES + 1),
        "more ciphertexts per chunk": replace(honest, chunk_ciphertexts=8),
        "a chunk count the size does not need": replace(honest, chunk_count=2),
        # Wider fields would show the carries between fields; two chunks, as 30,000 one-field slots need.
        "relabelled layout": replace(honest, layout=SumLayout.STATISTICS, chunk_count=2),
        "a forged signature": replace(honest, attestations=(replace(first, stream_digest=b"x" * 32), *rest)),
        "an unknown node": _manifest(folder, key_id, ("mallory", *SET[1:])),
        "an attestation of another model": replace(honest, attestations=(
            _attestation(folder, key_id, SET[0], SET, model_digest=b"n" * 32), *rest)),
        "attestations naming no model": _manifest(folder, key_id, SET, attestations=tuple(
            _attestation(folder, key_id, node, SET, model_digest=b"") for node in SET)),
    }[change]


@pytest.mark.parametrize(("change", "refusal", "message"), [
    ("too few", PolicyViolationError, "2 participants; the policy requires between 3 and n_max = 8"),
    ("more than n_max", PolicyViolationError, "9 participants"),
    ("one node three times", PolicyViolationError, "names a node twice"),
    ("a member missing its attestation", PolicyViolationError, "every member, and no one else, must attest"),
    ("an outsider's attestation", PolicyViolationError, "every member, and no one else, must attest"),
    ("another key", WrongKeyError, "current key"),
    ("an attestation of another round", PolicyViolationError, "another round"),
    ("an attestation of another attempt", PolicyViolationError, "another round, attempt"),
    ("an attestation for another set", PolicyViolationError, "participant set"),
    ("an inflated value count", PolicyViolationError, "size"),
    ("more ciphertexts per chunk", PolicyViolationError, "size"),
    ("a chunk count the size does not need", MalformedChunkError, "chunks of 4 ciphertexts are not 2 chunks"),
    ("relabelled layout", PolicyViolationError, "layout"),
    ("a forged signature", DigestMismatchError, "does not verify"),
    ("an unknown node", UnknownNodeError, "not a registered consortium member"),
    ("an attestation of another model", PolicyViolationError, "name 2 models"),
    ("attestations naming no model", PolicyViolationError, "name 1 models"),
])
def test_a_dishonest_manifest_is_refused_and_spends_no_round(keys, identities, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                            change: str, refusal: type, message: str) -> None:
    folder, registry = identities
    policy = DecryptionPolicy(keys, 3, registry, DecryptionLedger(tmp_path / "ledger.json"))
    with pytest.raises(refusal, match=message):
        policy.check(_dishonest(folder, keys.key_id, change))
    policy.check(_manifest(folder, keys.key_id))  # the refusal spent nothing: the round can still be decrypted
    assert policy.decrypted_rounds == frozenset()


def test_two_participant_sets_on_one_model_are_never_both_decrypted(  # type: ignore[no-untyped-def]
        keys, identities, tmp_path: Path) -> None:
    """Cross-round differencing: round 5 with the set S and round 6 with another set (hospital-1 swapped for
    hospital-5), on the same model, would differ by those two members' updates. The second is refused, after a restart too; the same set on the same model
    (a round retried after a failed sum) and another set on another model pass."""
    folder, registry = identities
    policy = DecryptionPolicy(keys, 3, registry, DecryptionLedger(tmp_path / "ledger.json"))
    policy.check(_manifest(folder, keys.key_id))
    policy.claim(_manifest(folder, keys.key_id))
    smaller = SET[1:] + (NODES[4],) if len(SET) == 3 else SET[1:]
    restarted = DecryptionPolicy(keys, 3, registry, DecryptionLedger(tmp_path / "ledger.json"))

    def round_6(members: tuple[str, ...], model: bytes) -> DecryptManifest:
        return replace(_manifest(folder, keys.key_id, members), round_id=6, attestations=tuple(
            _attestation(folder, keys.key_id, node, members, round_id=6, model_digest=model) for node in members))

    with pytest.raises(PolicyViolationError, match="one participant set per model"):
        restarted.check(round_6(smaller, MODEL))
    restarted.check(round_6(SET, MODEL))  # the same set again: nothing to difference
    restarted.check(round_6(smaller, b"n" * 32))  # another model
    restarted.claim(round_6(smaller, b"n" * 32))
    assert restarted.decrypted_rounds == {5, 6}
