"""A hospital's class names (in label order) and image counts, and the consortium's contract on them.

Labels are class indices. A hospital whose folders sort differently (`normal` before
`PNEUMONIA`), or whose folder is misspelled, would train the wrong classes without a
single error. Each node therefore sends its class names when it joins, and the aggregator
refuses any hospital whose names or order differ from the consortium's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.common.errors import ClassMismatchError


@dataclass(frozen=True)
class ClassRoster:
    names: tuple[str, ...]
    counts: tuple[int, ...] = ()  # empty when the hospital does not share them

    def table(self) -> str:
        """`NORMAL 60, PNEUMONIA 0 (NONE)`, or the names alone when no counts were shared."""
        if not self.counts:
            return ", ".join(self.names) + " (counts not shared)"
        return ", ".join(f"{name} {count}{' (NONE)' if count == 0 else ''}"
                         for name, count in zip(self.names, self.counts, strict=True))

    def empty_classes(self) -> list[str]:
        return [name for name, count in zip(self.names, self.counts) if count == 0]


def default_class_names(num_classes: int) -> tuple[str, ...]:
    """Names for local data that carries none (built in code, as tests do); every real source names its classes."""
    return tuple(f"CLASS_{i}" for i in range(num_classes))


def require_same_classes(consortium: Sequence[str], node_id: str, names: Sequence[str]) -> None:
    """Refuse, naming each difference, a hospital whose class names or order differ from the consortium's."""
    if not names:
        raise ClassMismatchError(f"node {node_id!r} sent no class names; the consortium's are {list(consortium)}")
    if tuple(consortium) == tuple(names):
        return
    differences = [f"label {i}: {theirs!r} at {node_id}, {ours!r} in the consortium"
                   for i, (theirs, ours) in enumerate(zip(names, consortium)) if theirs != ours]
    if len(names) != len(consortium):
        differences.append(f"{len(names)} classes at {node_id}, {len(consortium)} in the consortium")
    hint = (" (the same names in another order: set FEDXRAY_NODE_CLASS_NAMES to the consortium's order)"
            if sorted(names) == sorted(consortium) else
            " (a misspelled or differently named class folder? set FEDXRAY_NODE_CLASS_NAMES to the consortium's "
            "names and rename the folder)")
    raise ClassMismatchError(f"class names of {node_id} {list(names)} differ from the consortium's "
                             f"{list(consortium)}: {'; '.join(differences)}{hint}")


def class_counts_document(rosters: dict[str, ClassRoster]) -> dict[str, object]:
    """What the aggregator writes to STATE_DIR/class_counts.json as hospitals join: the class names and each
    sharing hospital's counts (the report plots them). A hospital that shares no counts is listed without."""
    names = next((roster.names for roster in rosters.values()), ())
    sharing = sorted(node for node, roster in rosters.items() if roster.counts)
    return {"classes": list(names), "hospitals": sharing,
            "counts": [list(rosters[node].counts) for node in sharing],
            "not_shared": sorted(node for node, roster in rosters.items() if not roster.counts)}
