"""When the key authority decrypts: every refusal of its policy, tried as a dishonest aggregator would."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from services.common.errors import (
    AlreadyDecryptedError,
    DigestMismatchError,
    PolicyViolationError,
    UnknownNodeError,
    WrongKeyError,
)
from services.common.round_plan import SumLayout
from services.common.stream_digest import NodeKeyRegistry, generate_identity, load_identity, sign_attestation
from services.common.upload import Attestation, DecryptManifest
from services.key_authority.decryption_policy import DecryptionLedger, DecryptionPolicy

KEY = "0123456789abcdef"
NODES = ("hospital-1", "hospital-2", "hospital-3", "hospital-4")


@pytest.fixture
def consortium(tmp_path: Path) -> tuple[Path, NodeKeyRegistry]:
    for node in NODES:
        generate_identity(tmp_path / "identities", node)
    return tmp_path, NodeKeyRegistry.from_directory(tmp_path / "identities")


def _attestation(folder: Path, node: str, round_id: int = 5, layout: SumLayout = SumLayout.UPDATE,
                 chunk_count: int = 2) -> Attestation:
    unsigned = Attestation(node, round_id, KEY, chunk_count, bytes([NODES.index(node)]) * 32, b"", layout)
    return replace(unsigned, signature=sign_attestation(load_identity(folder / "identities" / f"{node}.key"),
                                                        unsigned.signed_message()))


def _manifest(folder: Path, nodes: tuple[str, ...] = NODES[:3], **changes: object) -> DecryptManifest:
    manifest = DecryptManifest(5, KEY, 2, 1000, tuple(_attestation(folder, n) for n in nodes), SumLayout.UPDATE)
    return replace(manifest, **changes)


def _policy(folder: Path, registry: NodeKeyRegistry) -> DecryptionPolicy:
    return DecryptionPolicy(KEY, 3, registry, DecryptionLedger(folder / "ledger.json"))


def test_an_honest_manifest_is_decrypted_once_and_the_ledger_survives_a_restart(consortium) -> None:  # type: ignore[no-untyped-def]
    folder, registry = consortium
    _policy(folder, registry).authorize(_manifest(folder))
    with pytest.raises(AlreadyDecryptedError, match="round 5 was already decrypted"):
        _policy(folder, registry).authorize(_manifest(folder))  # a new process, the same ledger


@pytest.mark.parametrize(("change", "refusal", "message"), [
    ("too few", PolicyViolationError, "2 distinct attested participants"),
    ("one node three times", PolicyViolationError, "1 distinct attested participants"),
    ("another key", WrongKeyError, "current key"),
    ("an attestation of another round", PolicyViolationError, "another round"),
    ("relabelled layout", PolicyViolationError, "layout"),
    ("a forged signature", DigestMismatchError, "does not verify"),
    ("an unknown node", UnknownNodeError, "not a registered consortium member"),
])
def test_a_dishonest_manifest_is_refused_and_spends_no_round(consortium, change: str, refusal: type,  # type: ignore[no-untyped-def]
                                                            message: str) -> None:
    folder, registry = consortium
    honest = _manifest(folder)
    first, *rest = honest.attestations
    dishonest = {
        "too few": replace(honest, attestations=honest.attestations[:2]),
        "one node three times": replace(honest, attestations=(first, first, first)),
        "another key": replace(honest, key_id="f" * 16),
        "an attestation of another round": replace(honest, attestations=(_attestation(folder, NODES[0], 4), *rest)),
        # The nodes signed the update layout; asked to unpack wider, the sum would show its carries.
        "relabelled layout": replace(honest, layout=SumLayout.STATISTICS),
        "a forged signature": replace(honest, attestations=(replace(first, stream_digest=b"x" * 32), *rest)),
        "an unknown node": replace(honest, attestations=(replace(first, node_id="mallory"), *rest)),
    }[change]
    policy = _policy(folder, registry)
    with pytest.raises(refusal, match=message):
        policy.authorize(dishonest)
    policy.authorize(honest)  # the refusal spent nothing: the round can still be decrypted honestly
