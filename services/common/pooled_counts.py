"""Pooled class counts: each hospital's images per class summed over a round attempt's participants, the way the
updates are, so that a hospital that keeps its own counts (`share_class_counts=false`) still lets the report show
the consortium's.

Every participant adds to its counts, mod 2^COUNT_BITS, its pairwise masks with every other participant (the same
X25519 agreements as the update's masks, in their own HKDF domain, so the streams are new), and sends the result on
its upload's last chunk. Over the whole participant set the masks cancel and the aggregator reads the pooled counts;
over any proper subset one mask stays, and the values are uniform mod 2^COUNT_BITS. There is no encryption and no
noise: the pooled counts are exact.

What they disclose, and when a node sends them (`CountsRelease`):
- The aggregator learns the pooled counts of the participant set. If the others disclosed their own counts at
  join, the pooled counts less theirs are this hospital's: keeping one's counts protects them only when another
  participant keeps its own too.
- The same counts pooled over two different participant sets would give the difference of two hospitals' counts
  (and with enough sets, each hospital's). A node sends its masked counts for one participant set only, the first
  it sends them for, remembered in its state directory across restarts. A retried attempt with a smaller set gets
  none, and the consortium then has no pooled counts.
- A hospital training under record-level DP-SGD sends none: exact counts are a release its epsilon does not cover.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from services.common.atomic_files import write_json_atomic
from services.common.pairwise_masks import PeerMask, mask_values, participant_set_hash

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
    """A node's rule for its masked counts: one participant set only, remembered in `path` across restarts."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def allows(self, participants: Sequence[str]) -> bool:
        """Whether counts may be sent for this set: it is the remembered one, or none is remembered yet (it is now,
        on disk, before anything is sent)."""
        wanted = participant_set_hash(participants).hex()
        if self._path.exists():
            remembered = json.loads(self._path.read_text()).get("participant_set_sha256")
            if remembered != wanted:
                log.info("class counts not pooled for participants %s: already sent for another participant set "
                         "(pooled over two sets they would give the difference of two hospitals' counts)",
                         sorted(participants))
                return False
            return True
        write_json_atomic(self._path, {"participant_set_sha256": wanted, "participants": sorted(participants)})
        return True
