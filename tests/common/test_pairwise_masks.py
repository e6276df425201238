"""Pairwise masks cancel exactly over the whole participant set and leave any proper subset's sum uniform."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.secure_sum.pairwise_masks import (
    MaskScope,
    authority_mask,
    authority_unmasks,
    mask_values,
    participant_set_hash,
    peer_masks,
)
from tests.statistics import chi_square_critical, chi_square_uniform

NODES = ("hospital-1", "hospital-2", "hospital-3", "hospital-4", "hospital-5")
PRIVATE = {node: X25519PrivateKey.generate() for node in NODES}
PUBLIC = {node: key.public_key() for node, key in PRIVATE.items()}


def _masks(scope: MaskScope, start: int, count: int, bits: int) -> dict[str, np.ndarray]:
    return {node: mask_values(peer_masks(node, PRIVATE[node], PUBLIC, scope=scope), start, count, bits)
            for node in scope.participants}


@pytest.mark.parametrize("bits", [10, 16, 37])
def test_masks_cancel_exactly_over_the_participant_set(bits: int) -> None:
    scope = MaskScope("consortium", "key", 3, 1, NODES)
    masks = _masks(scope, 0, 5000, bits)
    assert not np.any(np.sum(list(masks.values()), axis=0) % (1 << bits))
    assert all(m.min() >= 0 and m.max() < (1 << bits) for m in masks.values())


def test_a_chunk_of_the_mask_is_the_same_slice_of_the_whole_mask() -> None:
    masks = peer_masks(NODES[0], PRIVATE[NODES[0]], PUBLIC, scope=MaskScope("c", "k", 1, 1, NODES))
    whole = mask_values(masks, 0, 10_000, 10)
    assert np.array_equal(mask_values(masks, 3_333, 4_000, 10), whole[3_333:7_333])


def test_a_proper_subsets_masked_sum_is_uniform_whatever_the_values() -> None:
    """Chi-square goodness of fit to uniform over the 2^10 field values, 100,000 coordinates: an honest
    subset sum of constant values would put every coordinate in one bin."""
    bits, count = 10, 100_000
    masks = _masks(MaskScope("c", "k", 9, 1, NODES), 0, count, bits)
    values = np.full(count, 7)
    partial = sum((values + masks[node]) for node in NODES[:4]) % (1 << bits)  # hospital-5 left out
    assert chi_square_uniform(partial, 1 << bits) < chi_square_critical(1 << bits, z=3.72)  # p = 1e-4
    # What is left is the values' sum minus the missing node's mask: a uniform key stream hides the sum.
    assert np.array_equal(partial, (4 * values - masks[NODES[4]]) % (1 << bits))


def test_masks_differ_for_another_round_attempt_set_or_key() -> None:
    base = MaskScope("c", "k", 4, 1, NODES)
    reference = mask_values(peer_masks(NODES[0], PRIVATE[NODES[0]], PUBLIC, scope=base), 0, 64, 16)
    for other in (MaskScope("c", "k", 5, 1, NODES), MaskScope("c", "k", 4, 2, NODES),
                  MaskScope("c", "k", 4, 1, NODES[:4]), MaskScope("c", "k2", 4, 1, NODES),
                  MaskScope("c2", "k", 4, 1, NODES)):
        assert not np.array_equal(mask_values(peer_masks(NODES[0], PRIVATE[NODES[0]], PUBLIC, scope=other), 0, 64, 16),
                                  reference)


def test_a_node_outside_the_set_or_a_missing_peer_key_is_refused() -> None:
    with pytest.raises(ValueError, match="not in the participant set"):
        peer_masks("mallory", X25519PrivateKey.generate(), PUBLIC, scope=MaskScope("c", "k", 1, 1, NODES))
    with pytest.raises(KeyError, match="hospital-2"):
        peer_masks(NODES[0], PRIVATE[NODES[0]], {}, scope=MaskScope("c", "k", 1, 1, NODES[:2]))
    assert participant_set_hash(NODES) == participant_set_hash(tuple(reversed(NODES)))


def test_the_key_authority_removes_its_masks_only_for_the_manifests_own_scope() -> None:
    authority = X25519PrivateKey.generate()
    scope = MaskScope("c", "k", 3, 1, NODES, b"plan")

    def node_total(s: MaskScope) -> np.ndarray:
        return sum((mask_values([*peer_masks(n, PRIVATE[n], PUBLIC, scope=s),
                                 authority_mask(n, PRIVATE[n], authority.public_key(), s)], 0, 4096, 10)
                    for n in NODES), np.zeros(4096, dtype=np.int64)) % 1024
    removed = mask_values(authority_unmasks(authority, PUBLIC, scope), 0, 4096, 10)
    assert not np.any((node_total(scope) + removed) % 1024)  # pairwise and authority masks all gone
    for other in (MaskScope("c", "k", 2, 1, NODES, b"plan"), MaskScope("c", "k", 3, 1, NODES, b"other plan")):
        leftover = (node_total(other) + removed) % 1024  # another round's or plan's sum under this manifest
        assert chi_square_uniform(leftover, 1024) < chi_square_critical(1024, z=3.72)
    with pytest.raises(KeyError, match="hospital-5"):
        authority_unmasks(authority, {n: PUBLIC[n] for n in NODES[:4]}, scope)
