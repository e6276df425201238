"""Specification of how one dataset is split across hospitals."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.hospital_node.data.partition import (
    PARTITION_SCHEMES,
    class_counts,
    format_class_counts,
    partition_indices,
)


def _shuffled_labels(class_sizes: list[int], seed: int = 0) -> npt.NDArray[np.int64]:
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes).astype(np.int64)
    return np.random.default_rng(seed).permutation(labels)


def _mean_label_skew(labels: npt.NDArray[np.int64], parts: list[npt.NDArray[np.int64]]) -> float:
    """Mean total-variation distance between each party's and the global label mix."""
    classes = int(labels.max()) + 1
    overall = np.bincount(labels, minlength=classes) / labels.size
    distances = [
        0.5 * np.abs(np.bincount(labels[part], minlength=classes) / part.size - overall).sum()
        for part in parts
    ]
    return float(np.mean(distances))


def _assert_exact_cover(parts: list[npt.NDArray[np.int64]], sample_count: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == sample_count
    np.testing.assert_array_equal(np.sort(joined), np.arange(sample_count))
    for part in parts:
        np.testing.assert_array_equal(part, np.sort(part))
        assert part.dtype == np.int64


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_every_index_is_used_exactly_once(scheme: str) -> None:
    labels = _shuffled_labels([300, 150, 50])
    parts = partition_indices(labels, parties=6, scheme=scheme, alpha=0.3, seed=1)
    assert len(parts) == 6
    _assert_exact_cover(parts, labels.size)


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_class_counts_add_up_to_the_whole_dataset(scheme: str) -> None:
    labels = _shuffled_labels([120, 80])
    parts = partition_indices(labels, parties=4, scheme=scheme, seed=2)
    counts = class_counts(labels, parts, num_classes=2)
    np.testing.assert_array_equal(counts.sum(axis=0), [120, 80])


@pytest.mark.parametrize("scheme", PARTITION_SCHEMES)
def test_same_seed_gives_the_same_split(scheme: str) -> None:
    labels = _shuffled_labels([90, 60, 30])
    first = partition_indices(labels, 5, scheme, alpha=0.5, seed=11)
    second = partition_indices(labels, 5, scheme, alpha=0.5, seed=11)
    for left, right in zip(first, second):
        np.testing.assert_array_equal(left, right)


def test_different_seeds_give_different_splits() -> None:
    labels = _shuffled_labels([90, 60, 30])
    first = partition_indices(labels, 3, "dirichlet", seed=1)
    second = partition_indices(labels, 3, "dirichlet", seed=2)
    assert any(not np.array_equal(left, right) for left, right in zip(first, second))


def test_iid_sizes_differ_by_at_most_one() -> None:
    labels = _shuffled_labels([60, 43])  # 103 samples over 4 parties: 26, 26, 26, 25
    parts = partition_indices(labels, 4, "iid")
    assert sorted(part.size for part in parts) == [25, 26, 26, 26]


def test_dirichlet_with_small_alpha_is_more_label_skewed_than_iid() -> None:
    labels = _shuffled_labels([400, 400, 400])
    iid_skew = _mean_label_skew(labels, partition_indices(labels, 5, "iid", seed=3))
    dirichlet_skew = _mean_label_skew(labels, partition_indices(labels, 5, "dirichlet", alpha=0.1, seed=3))
    assert iid_skew < 0.1
    assert dirichlet_skew > iid_skew + 0.25


def test_larger_alpha_gives_less_label_skew() -> None:
    labels = _shuffled_labels([400, 400, 400])
    skew = {
        alpha: np.mean([
            _mean_label_skew(labels, partition_indices(labels, 5, "dirichlet", alpha=alpha, seed=seed))
            for seed in range(5)
        ])
        for alpha in (0.1, 100.0)
    }
    assert skew[100.0] < skew[0.1]


def test_quantity_skew_gives_unequal_sizes_with_iid_labels() -> None:
    labels = _shuffled_labels([1000, 1000])
    parts = partition_indices(labels, 5, "quantity", alpha=0.3, seed=4)
    sizes = np.array([part.size for part in parts])
    assert sizes.max() >= 2 * sizes.min()
    big_parties = [part for part in parts if part.size >= 200]
    assert big_parties, "expected at least one party of 200+ samples"
    for part in big_parties:
        assert abs(labels[part].mean() - 0.5) < 0.12  # labels stay roughly IID


@pytest.mark.parametrize("scheme", ["dirichlet", "quantity"])
def test_min_size_is_honoured_even_under_extreme_skew(scheme: str) -> None:
    labels = _shuffled_labels([150, 40, 10])
    parts = partition_indices(labels, 10, scheme, alpha=0.05, seed=5, min_size=15)
    assert min(part.size for part in parts) >= 15
    _assert_exact_cover(parts, labels.size)


def test_one_party_gets_everything() -> None:
    labels = _shuffled_labels([3, 4])
    (only,) = partition_indices(labels, 1, "dirichlet")
    np.testing.assert_array_equal(only, np.arange(7))


@pytest.mark.parametrize(
    ("parties", "scheme", "alpha", "min_size", "message"),
    [
        (2, "round_robin", 0.5, 1, "unknown partition scheme"),
        (0, "iid", 0.5, 1, "parties must be >= 1"),
        (11, "iid", 0.5, 1, "cannot split 10 samples across 11 parties"),
        (4, "iid", 0.5, 3, "cannot give each of 4 parties 3 samples"),
        (2, "dirichlet", 0.0, 1, "alpha must be > 0"),
        (2, "quantity", -1.0, 1, "alpha must be > 0"),
        (2, "iid", 0.5, -1, "min_size must be >= 0"),
    ],
)
def test_bad_arguments_raise_value_error_naming_the_problem(
    parties: int, scheme: str, alpha: float, min_size: int, message: str
) -> None:
    labels = _shuffled_labels([5, 5])
    with pytest.raises(ValueError, match=message):
        partition_indices(labels, parties, scheme, alpha=alpha, min_size=min_size)


def test_two_dimensional_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="one-dimensional"):
        partition_indices(np.zeros((4, 2), dtype=np.int64), 2, "iid")


def test_class_counts_match_a_hand_count() -> None:
    labels = np.array([0, 1, 1, 2, 0])
    counts = class_counts(labels, [np.array([0, 1]), np.array([2, 3, 4])], num_classes=3)
    np.testing.assert_array_equal(counts, [[1, 1, 0], [1, 1, 1]])


def test_class_counts_refuse_labels_outside_the_class_range() -> None:
    with pytest.raises(ValueError):
        class_counts(np.array([0, 3]), [np.array([0, 1])], num_classes=3)


def test_formatted_table_has_one_row_per_hospital_and_a_total() -> None:
    table = format_class_counts(np.array([[1, 2], [30, 4]]), ("A", "B"))
    assert table == (
        "hospital     A  B  total\n"
        "hospital-1   1  2      3\n"
        "hospital-2  30  4     34\n"
        "total       31  6     37"
    )


def test_formatted_table_refuses_mismatched_class_names() -> None:
    with pytest.raises(ValueError):
        format_class_counts(np.array([[1, 2]]), ("only-one",))


@st.composite
def _partition_cases(draw: st.DrawFn) -> tuple[list[int], int, str, float, int, int]:
    labels = draw(st.lists(st.integers(0, 3), min_size=1, max_size=150))
    parties = draw(st.integers(1, min(8, len(labels))))
    min_size = draw(st.integers(0, len(labels) // parties))
    scheme = draw(st.sampled_from(PARTITION_SCHEMES))
    alpha = draw(st.floats(0.01, 10.0))
    seed = draw(st.integers(0, 2**31 - 1))
    return labels, parties, scheme, alpha, seed, min_size


@settings(max_examples=60, deadline=None)
@given(_partition_cases())
def test_any_valid_request_covers_every_index_once_and_honours_min_size(
    case: tuple[list[int], int, str, float, int, int],
) -> None:
    labels, parties, scheme, alpha, seed, min_size = case
    label_array = np.array(labels, dtype=np.int64)
    parts = partition_indices(label_array, parties, scheme, alpha=alpha, seed=seed, min_size=min_size)
    assert len(parts) == parties
    _assert_exact_cover(parts, label_array.size)
    assert min(part.size for part in parts) >= min_size
    counts = class_counts(label_array, parts, num_classes=4)
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(label_array, minlength=4))


def test_label_mix_gives_equal_sizes_and_skewed_labels() -> None:
    labels = np.repeat([0, 1], 2500)
    parts = partition_indices(labels, 5, "label_mix", alpha=0.5, seed=0)
    assert sorted(part.size for part in parts) == [1000] * 5
    assert _mean_label_skew(labels, parts) > _mean_label_skew(labels, partition_indices(labels, 5, "iid")) + 0.1
    many = partition_indices(labels, 5, "label_mix", alpha=1000.0, seed=0)
    assert max(abs(np.mean(labels[part]) - 0.5) for part in many) < 0.1


def test_label_mix_keeps_the_skew_it_draws_despite_fixed_class_totals() -> None:
    labels = np.repeat([0, 1], 1000)
    counts = class_counts(labels, partition_indices(labels, 5, "label_mix", alpha=0.1, seed=0), 2)
    assert counts.sum(axis=1).tolist() == [400] * 5
    assert counts.sum(axis=0).tolist() == [1000, 1000]
    shares = counts[:, 1] / 400
    assert np.sum((shares < 0.05) | (shares > 0.95)) >= 3, counts.tolist()
