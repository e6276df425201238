"""Split one labelled dataset across simulated hospitals.

Schemes:

* ``iid``       - a random permutation cut into near-equal parts.
* ``dirichlet`` - label skew: each class is split over the parties with
  proportions drawn from Dirichlet(alpha) (Yurochkin et al., ICML 2019; the
  NIID-Bench split of Li et al., ICDE 2022). Small alpha -> each hospital sees
  few classes; party sizes come out unequal too.
* ``label_mix`` - label skew alone: equal party sizes, and each party's class
  mix drawn from Dirichlet(alpha) (Hsu, Qi & Brown, "Measuring the Effects of
  Non-Identical Data Distribution for Federated Visual Classification", 2019,
  with alpha per class). The mixes are fitted to the class totals by
  iterative proportional fitting, which keeps each party's skew.
* ``quantity``  - quantity skew: party sizes follow Dirichlet(alpha), labels
  are IID within each party (Li et al., "Federated Learning on Non-IID Data
  Silos: An Experimental Study", ICDE 2022).

Every index is used exactly once, every party receives at least ``min_size``
samples, and the result depends only on the arguments (``seed`` included).
"""

from __future__ import annotations

from typing import Final, Literal, Sequence, get_args

import numpy as np
import numpy.typing as npt

IndexArray = npt.NDArray[np.int64]
CountArray = npt.NDArray[np.int64]

PartitionScheme = Literal["iid", "dirichlet", "label_mix", "quantity"]
PARTITION_SCHEMES: Final[tuple[str, ...]] = get_args(PartitionScheme)

# Resampling budget before falling back to moving samples (Dirichlet scheme).
DIRICHLET_RESAMPLE_ATTEMPTS: Final[int] = 20


def partition_indices(
    labels: npt.ArrayLike,
    parties: int,
    scheme: str,
    *, alpha: float = 0.5,
    seed: int = 0,
    min_size: int = 1,
) -> list[IndexArray]:
    """Return one sorted int64 index array per party; together they cover ``labels``.

    Raises ``ValueError`` for an unknown scheme, ``parties < 1``, a
    non-positive ``alpha`` (when the scheme uses it), a negative ``min_size``
    or fewer samples than ``parties * max(min_size, 1)``.
    """
    label_array = _validated_labels(labels)
    sample_count = label_array.size
    if scheme not in PARTITION_SCHEMES:
        raise ValueError(f"unknown partition scheme {scheme!r}; expected one of {PARTITION_SCHEMES}")
    if parties < 1:
        raise ValueError(f"parties must be >= 1, got {parties}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if sample_count < parties:
        raise ValueError(f"cannot split {sample_count} samples across {parties} parties")
    if sample_count < parties * min_size:
        raise ValueError(
            f"cannot give each of {parties} parties {min_size} samples: only {sample_count} samples"
        )
    if scheme != "iid" and not alpha > 0.0:
        raise ValueError(f"alpha must be > 0 for the {scheme!r} scheme, got {alpha}")

    rng = np.random.default_rng(seed)
    if scheme == "iid":
        parts = _split_by_sizes(rng.permutation(sample_count), _equal_sizes(sample_count, parties))
    elif scheme == "label_mix":
        parts = _label_mix(rng, label_array, parties, alpha)
    elif scheme == "quantity":
        sizes = _dirichlet_sizes(rng, sample_count, parties, alpha=alpha, min_size=min_size)
        parts = _split_by_sizes(rng.permutation(sample_count), sizes)
    else:
        parts = _dirichlet_label_skew(rng, label_array, parties, alpha=alpha, min_size=min_size)
    return [np.sort(part).astype(np.int64) for part in parts]


def class_counts(
    labels: npt.ArrayLike, parts: Sequence[npt.ArrayLike], num_classes: int
) -> CountArray:
    """Samples of each class held by each party, shape ``(parties, num_classes)``."""
    label_array = _validated_labels(labels)
    if label_array.size and (label_array.min() < 0 or label_array.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got range "
                         f"[{label_array.min()}, {label_array.max()}]")
    counts = np.zeros((len(parts), num_classes), dtype=np.int64)
    for party, indices in enumerate(parts):
        counts[party] = np.bincount(label_array[np.asarray(indices, dtype=np.int64)],
                                    minlength=num_classes)
    return counts


def format_class_counts(counts: npt.ArrayLike, class_names: Sequence[str],
                        hospitals: Sequence[str] | None = None) -> str:
    """A fixed-width table: a header, one row per hospital, then a total row. A hospital with no image of a class
    shows `0 !`, and a line below says which."""
    count_array = np.asarray(counts, dtype=np.int64)
    if count_array.ndim != 2 or count_array.shape[1] != len(class_names):
        raise ValueError(
            f"counts of shape {count_array.shape} do not match {len(class_names)} class names"
        )
    header = ["hospital", *class_names, "total"]
    names = list(hospitals) if hospitals is not None else [f"hospital-{p + 1}" for p in range(len(count_array))]
    rows = [
        [names[party], *(f"{value} !" if value == 0 else str(value) for value in row), str(row.sum())]
        for party, row in enumerate(count_array)
    ]
    rows.append(["total", *(str(value) for value in count_array.sum(axis=0)), str(count_array.sum())])
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def render(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:]))
        return "  ".join([first, *rest])

    missing = [f"{names[party]} has no {class_names[c]}" for party, row in enumerate(count_array)
               for c, value in enumerate(row) if value == 0]
    return "\n".join([*(render(line) for line in [header, *rows]),
                      *([f"! no images of a class: {'; '.join(missing)}"] if missing else [])])


def _validated_labels(labels: npt.ArrayLike) -> IndexArray:
    label_array = np.asarray(labels)
    if label_array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {label_array.shape}")
    if label_array.size and not np.issubdtype(label_array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {label_array.dtype}")
    return label_array.astype(np.int64)


def _equal_sizes(total: int, parties: int) -> IndexArray:
    sizes = np.full(parties, total // parties, dtype=np.int64)
    sizes[: total % parties] += 1
    return sizes


def _split_by_sizes(order: npt.NDArray[np.integer], sizes: IndexArray) -> list[IndexArray]:
    return [part.astype(np.int64) for part in np.split(order, np.cumsum(sizes)[:-1])]


def _dirichlet_sizes(
    rng: np.random.Generator, total: int, parties: int, *, alpha: float, min_size: int
) -> IndexArray:
    """Reserve ``min_size`` per party, share the rest by Dirichlet proportions.

    Rounding uses largest remainders so the sizes add up to ``total`` exactly.
    """
    proportions = rng.dirichlet(np.full(parties, alpha))
    spare = total - parties * min_size
    ideal = proportions * spare
    sizes = np.floor(ideal).astype(np.int64)
    shortfall = spare - int(sizes.sum())
    # argsort is stable, so ties in remainder go to the lower party index.
    sizes[np.argsort(-(ideal - sizes), kind="stable")[:shortfall]] += 1
    return sizes + min_size


def _dirichlet_label_skew(
    rng: np.random.Generator,
    labels: IndexArray,
    parties: int,
    *, alpha: float,
    min_size: int,
) -> list[IndexArray]:
    """Per-class Dirichlet split; resample while a party is short, then top up."""
    classes = np.unique(labels)
    parts: list[IndexArray] = []
    for _ in range(DIRICHLET_RESAMPLE_ATTEMPTS):
        shares: list[list[IndexArray]] = [[] for _ in range(parties)]
        for label in classes:
            members = rng.permutation(np.flatnonzero(labels == label))
            proportions = rng.dirichlet(np.full(parties, alpha))
            cuts = (np.cumsum(proportions)[:-1] * members.size).astype(np.int64)
            for party, chunk in enumerate(np.split(members, cuts)):
                shares[party].append(chunk)
        parts = [np.concatenate(chunks).astype(np.int64) for chunks in shares]
        if min(part.size for part in parts) >= min_size:
            return parts
    return _top_up_small_parties(parts, min_size)


def _label_mix(rng: np.random.Generator, labels: IndexArray, parties: int, alpha: float) -> list[IndexArray]:
    """Equal sizes; the class counts follow each party's Dirichlet mix as closely as the class totals allow."""
    classes, totals = np.unique(labels, return_counts=True)
    sizes = _equal_sizes(labels.size, parties)
    mixes = rng.dirichlet(np.full(classes.size, alpha), size=parties)
    counts = _fit_margins(mixes * sizes[:, None], sizes, totals)
    pools = [rng.permutation(np.flatnonzero(labels == label)) for label in classes]
    starts = np.vstack([np.zeros(classes.size, dtype=np.int64), np.cumsum(counts, axis=0)])
    return [np.concatenate([pools[c][starts[p, c]:starts[p + 1, c]] for c in range(classes.size)]).astype(np.int64)
            for p in range(parties)]


def _fit_margins(wanted: npt.NDArray[np.float64], rows: IndexArray, columns: IndexArray) -> IndexArray:
    """Integer counts with exactly these row and column sums, close to `wanted`.

    Iterative proportional fitting keeps the odds between a party's classes (the skew), then
    rounding down and handing out the remaining units by largest remainder meets both sums.
    """
    fitted = wanted + 1e-9
    for _ in range(200):
        fitted *= (columns / fitted.sum(axis=0))[None, :]
        fitted *= (rows / fitted.sum(axis=1))[:, None]
    counts = np.floor(fitted).astype(np.int64)
    remainder = fitted - counts
    for flat in np.argsort(-remainder, axis=None, kind="stable"):
        row, column = np.unravel_index(flat, counts.shape)
        if counts[row].sum() < rows[row] and counts[:, column].sum() < columns[column]:
            counts[row, column] += 1
    while (counts.sum(axis=1) < rows).any():  # units the remainders could not place
        row = int(np.flatnonzero(counts.sum(axis=1) < rows)[0])
        column = int(np.flatnonzero(counts.sum(axis=0) < columns)[0])
        counts[row, column] += 1
    return counts


def _top_up_small_parties(parts: list[IndexArray], min_size: int) -> list[IndexArray]:
    """Move samples from the currently largest party to each short one.

    Deterministic: the donor is the largest party (lowest index on ties) and
    it gives away the samples at the end of its (already shuffled) array.
    Feasible because the caller checked ``len(labels) >= parties * min_size``.
    """
    parts = list(parts)
    for receiver in range(len(parts)):
        while parts[receiver].size < min_size:
            donor = int(np.argmax([part.size for part in parts]))
            needed = min_size - parts[receiver].size
            give = min(needed, parts[donor].size - min_size)
            parts[receiver] = np.concatenate([parts[receiver], parts[donor][-give:]])
            parts[donor] = parts[donor][:-give]
    return parts
