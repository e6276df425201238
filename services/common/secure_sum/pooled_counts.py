"""Pooled class counts: each hospital's images per class summed over a round attempt's participants, the way the
updates are, so that a hospital that keeps its own counts (`share_class_counts=false`) still lets the report show
the consortium's.

Every participant adds to its counts, mod 2^COUNT_BITS, its pairwise masks with every other participant (the same
X25519 agreements as the update's masks, in their own HKDF domain, so the streams are new), and sends the result on
its upload's last chunk. Over the whole participant set the masks cancel and the aggregator reads the pooled counts;
over any proper subset one mask stays, and the values are uniform mod 2^COUNT_BITS. There is no encryption and no
noise: the pooled counts are exact.

What they disclose, and when a node sends them (`CountsRelease`):
- The aggregator learns the pooled counts of the participant set. A node sends its masked counts only when that set
  is the whole consortium (every member whose key it holds): otherwise the aggregator could choose to pool a
  hospital that keeps its counts with hospitals that disclosed theirs, and subtract. So the pooled counts are the
  consortium's total, and the pooled counts less those the others disclosed at join are the total of the
  hospitals that kept theirs: keeping one's counts hides them only when another hospital keeps its own too.
- The same counts pooled over two different sets, or two different counts over the same set (a hospital
  restarted with other images), would give a difference of counts. A node remembers, in its state directory across
  restarts, the set and the counts it sent: it sends them again (with any later upload to that set) only while
  both are the same, and never for another set or other counts. A round without a member then gets none, and if
  the first secure upload's set lacked a member, the consortium has no pooled counts.
- A hospital training under record-level DP-SGD sends none: exact counts are a release its epsilon does not cover.
  A hospital that follows the aggregator's proposal of DP-SGD from a later round on has sent them before it.
- A hostile hospital can shift the pooled counts (a small offset passes unseen, as false counts at join would) or
  block them for good (by sending none, or garbage); it cannot touch the sums, the model or any ledger.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

import numpy as np

from services.common.runtime.atomic_files import read_json, write_json_atomic
from services.common.secure_sum.pairwise_masks import PeerMask, mask_values, participant_set_hash

log = logging.getLogger(__name__)

COUNTS_DOMAIN = b"fedxray.v1/class-count-mask"
COUNT_BITS = 48
# Where the aggregator writes them, in its state directory, once: the first participant set that pools.
POOLED_COUNTS_FILE = "pooled_class_counts.json"
# The most classes a masked count vector may hold (far above any classifier here; bounds what a node may send).
MAX_CLASSES = 1024
# A pooled count above this is no count (2^40, a trillion images): masks that did not cancel, or a node's garbage.
PLAUSIBLE_COUNT = 1 << 40


class PooledCountsError(ValueError):
    """The masked counts of a participant set do not pool into counts."""


def masked_counts(counts: Sequence[int], masks: Sequence[PeerMask]) -> tuple[int, ...]:
    """This node's counts plus its count masks, mod 2^COUNT_BITS."""
    values = np.asarray(counts, dtype=np.int64)
    if values.ndim != 1 or (values < 0).any() or (values >= PLAUSIBLE_COUNT).any():
        raise ValueError(f"class counts must be whole numbers in [0, 2^40), got {list(counts)}")
    masked = np.mod(values + mask_values(masks, 0, values.size, COUNT_BITS), 1 << COUNT_BITS)
    return tuple(int(value) for value in masked)


def pool_counts(masked: Mapping[str, Sequence[int]], participants: Sequence[str]) -> tuple[int, ...]:
    """The participants' counts summed, from every participant's masked counts (their masks cancel)."""
    if set(masked) != set(participants):
        raise PooledCountsError(f"masked class counts from {sorted(masked)}, participants {sorted(participants)}: "
                                "the masks cancel only over the whole participant set")
    lengths = {len(values) for values in masked.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise PooledCountsError(f"masked class counts of different lengths {sorted(lengths)}")
    for node, values in masked.items():
        if any(not 0 <= int(value) < 1 << COUNT_BITS for value in values):
            raise PooledCountsError(f"{node} sent masked class counts outside [0, 2^{COUNT_BITS})")
    pooled = tuple(sum(int(value) for value in column) % (1 << COUNT_BITS) for column in zip(*masked.values()))
    if any(value >= PLAUSIBLE_COUNT for value in pooled):
        raise PooledCountsError(f"the pooled class counts {list(pooled)} are no counts: a participant's masks or "
                                "counts were not made for this participant set")
    return pooled


class CountsRelease:
    """A node's rule for its masked counts: the whole consortium's set only, and one set and one count vector ever,
    remembered in `path` across restarts."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._sent: dict[str, object] | None = read_json(path)  # the set and counts sent, once sent

    def allows(self, participants: Sequence[str], counts: Sequence[int], consortium: Collection[str]) -> bool:
        """Whether `counts` may be sent for this set: it is the whole `consortium`, and it and the counts are the
        remembered ones, or none are remembered yet (they are now, on disk, before anything is sent)."""
        if set(participants) != set(consortium):
            log.info("class counts not pooled in this attempt: its participants %s are not the whole consortium "
                     "(%d members), and a smaller set could pool this hospital with those that disclosed theirs",
                     sorted(participants), len(set(consortium)))
            return False
        wanted: dict[str, object] = {"participant_set_sha256": participant_set_hash(participants).hex(),
                                     "counts": [int(count) for count in counts]}
        if self._sent is None:
            sent = {**wanted, "participants": sorted(participants)}
            write_json_atomic(self._path, sent)
            self._sent = sent
            return True
        if {key: self._sent.get(key) for key in wanted} != wanted:
            log.info("class counts not pooled: already sent for another participant set or other counts (%s); "
                     "two pooled totals would give a difference of counts", self._path)
            return False
        return True
