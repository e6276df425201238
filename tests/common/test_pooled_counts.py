"""Pooled class counts: masked with real X25519 agreements and ChaCha20 streams, they pool exactly over the whole
participant set, and an aggregator holding fewer of them, or asking for them under a second set, learns nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.secure_sum.pairwise_masks import MaskScope, mask_values, peer_masks
from services.common.secure_sum.pooled_counts import (
    COUNT_BITS,
    COUNTS_DOMAIN,
    PLAUSIBLE_COUNT,
    CountsRelease,
    PooledCountsError,
    masked_counts,
    pool_counts,
)

NODES = [f"hospital-{i}" for i in range(1, 5)]
COUNTS = {"hospital-1": (120, 0), "hospital-2": (35, 410), "hospital-3": (7, 9), "hospital-4": (1000, 1)}


def _masked(participants: list[str], attempt: int = 1) -> dict[str, tuple[int, ...]]:
    private = {node: X25519PrivateKey.generate() for node in participants}
    public = {node: key.public_key() for node, key in private.items()}
    scope = MaskScope("consortium", "key", 1, attempt, tuple(participants))
    return {node: masked_counts(COUNTS[node], peer_masks(node, private[node], public, scope=scope,
                                                         domain=COUNTS_DOMAIN))
            for node in participants}


def test_masked_counts_pool_exactly_over_the_whole_participant_set() -> None:
    pooled = pool_counts(_masked(NODES), NODES)
    assert pooled == (1162, 420)


def test_one_hospitals_masked_counts_and_a_proper_subsets_sum_say_nothing_of_the_counts() -> None:
    """The aggregator as the attacker: it holds every masked vector, but sums fewer than all of them (or reads one
    alone). One mask stays in each value, so what it gets is uniform mod 2^48, not the subset's counts: the pooling
    refuses it, and the raw sums are not the counts either."""
    masked = _masked(NODES)
    for node in NODES:
        assert masked[node] != COUNTS[node] and max(masked[node]) >= PLAUSIBLE_COUNT >> 8
    subset = NODES[:3]
    with pytest.raises(PooledCountsError, match="whole participant set"):
        pool_counts(masked, subset)
    with pytest.raises(PooledCountsError, match="are no counts"):
        pool_counts({node: masked[node] for node in subset}, subset)
    raw = np.sum([masked[node] for node in subset], axis=0) % (1 << COUNT_BITS)
    assert not np.array_equal(raw, np.sum([COUNTS[node] for node in subset], axis=0))


def test_masks_made_for_another_participant_set_do_not_cancel() -> None:
    """Masked counts kept from one attempt and pooled with another attempt's: refused as no counts."""
    first, second = _masked(NODES, attempt=1), _masked(NODES, attempt=2)
    mixed = {**second, NODES[0]: first[NODES[0]]}
    with pytest.raises(PooledCountsError, match="are no counts"):
        pool_counts(mixed, NODES)


def test_the_count_masks_are_other_streams_than_the_update_masks() -> None:
    private = {node: X25519PrivateKey.generate() for node in NODES}
    public = {node: key.public_key() for node, key in private.items()}
    scope = MaskScope("consortium", "key", 1, 1, tuple(NODES))
    update = peer_masks(NODES[0], private[NODES[0]], public, scope=scope)
    counts = peer_masks(NODES[0], private[NODES[0]], public, scope=scope, domain=COUNTS_DOMAIN)
    assert {m.key for m in update}.isdisjoint({m.key for m in counts})
    assert not np.array_equal(mask_values(update, 0, 8, COUNT_BITS), mask_values(counts, 0, 8, COUNT_BITS))


def test_a_node_sends_its_counts_for_the_whole_consortium_and_one_set_and_count_vector_only(tmp_path: Path) -> None:
    """The aggregator as the attacker, choosing the sets: pooled over {1,2,3} while 2 and 3 disclosed theirs at join,
    the counts would be hospital-1's; pooled over two sets, or over one set before and after the hospital's images
    changed, a difference of counts. None of these is allowed, also after the node restarts (a new rule object on the
    same state file)."""
    path = tmp_path / "pooled_class_counts_sent.json"
    counts = COUNTS["hospital-1"]
    assert not CountsRelease(path).allows(NODES[:3], counts, NODES)  # a set short of the consortium: nothing kept
    assert not path.exists()
    assert CountsRelease(path).allows(NODES, counts, NODES)
    assert CountsRelease(path).allows(list(reversed(NODES)), counts, NODES)  # the same set, in another order
    restarted = CountsRelease(path)
    assert not restarted.allows(NODES, (121, 0), NODES)  # other images after a restart
    grown = [*NODES, "hospital-5"]
    assert not restarted.allows(grown, counts, grown)  # the consortium grew: its total less the first is the newcomer's
    assert restarted.allows(NODES, counts, NODES)


def test_counts_that_are_no_counts_are_refused_before_masking() -> None:
    for bad in ((-1, 3), (PLAUSIBLE_COUNT, 0)):
        with pytest.raises(ValueError, match="whole numbers"):
            masked_counts(bad, [])


def test_a_hostile_nodes_masked_counts_outside_the_field_are_refused_by_name() -> None:
    masked = _masked(NODES)
    for bad, reason in (((1 << COUNT_BITS, 0), "hospital-2 sent masked class counts outside"),
                        ((5,), "different lengths")):
        with pytest.raises(PooledCountsError, match=reason):
            pool_counts({**masked, "hospital-2": bad}, NODES)
