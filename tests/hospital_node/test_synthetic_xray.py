"""Specification of the SYNTHETIC chest radiograph generator."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from services.hospital_node.data.synthetic_xray import (
    BINARY_CLASS_NAMES,
    DIFFUSE,
    NORMAL,
    OPACITY,
    THREE_CLASS_NAMES,
    generate_synthetic_xrays,
    synthetic_class_names,
)


def _lung_field_brightness(images: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Mean of both lung regions (rows 25-70 %, columns 15-40 % and 60-85 %)."""
    size = images.shape[-1]
    rows = slice(size // 4, int(size * 0.7))
    right_lung = images[:, 0, rows, int(size * 0.15): int(size * 0.4)]
    left_lung = images[:, 0, rows, int(size * 0.6): int(size * 0.85)]
    return (right_lung.mean(axis=(1, 2)) + left_lung.mean(axis=(1, 2))) / 2.0


def _rank_auc(positive: npt.NDArray[np.float64], negative: npt.NDArray[np.float64]) -> float:
    wins = (positive[:, None] > negative[None, :]).sum() + 0.5 * (positive[:, None] == negative[None, :]).sum()
    return float(wins / (positive.size * negative.size))


def test_same_seed_gives_identical_arrays() -> None:
    first_images, first_labels = generate_synthetic_xrays(40, 32, num_classes=3, seed=7)
    second_images, second_labels = generate_synthetic_xrays(40, 32, num_classes=3, seed=7)
    np.testing.assert_array_equal(first_images, second_images)
    np.testing.assert_array_equal(first_labels, second_labels)


def test_different_seeds_give_different_images() -> None:
    first_images, _ = generate_synthetic_xrays(10, 32, seed=1)
    second_images, _ = generate_synthetic_xrays(10, 32, seed=2)
    assert np.abs(first_images - second_images).mean() > 0.01


def test_images_are_float32_single_channel_in_unit_range_and_labels_int64() -> None:
    images, labels = generate_synthetic_xrays(25, 48, num_classes=2, seed=0)
    assert images.shape == (25, 1, 48, 48)
    assert images.dtype == np.float32
    assert labels.shape == (25,)
    assert labels.dtype == np.int64
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert set(labels.tolist()) <= {0, 1}


@pytest.mark.parametrize("num_classes", [2, 3])
def test_classes_are_balanced_to_within_one_image(num_classes: int) -> None:
    _, labels = generate_synthetic_xrays(101, 16, num_classes=num_classes, seed=3)
    counts = np.bincount(labels, minlength=num_classes)
    assert counts.sum() == 101
    assert counts.max() - counts.min() <= 1


def test_labels_are_shuffled_not_in_class_order() -> None:
    _, labels = generate_synthetic_xrays(60, 16, seed=4)
    assert not np.array_equal(labels, np.sort(labels))


def test_lungs_are_darker_than_the_mediastinum() -> None:
    images, _ = generate_synthetic_xrays(50, 64, seed=5)
    centre_column = images[:, 0, 16:44, 30:34].mean()
    assert _lung_field_brightness(images).mean() < centre_column - 0.05


@pytest.fixture(scope="module")
def three_class_lung_brightness() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    images, labels = generate_synthetic_xrays(2400, 32, num_classes=3, seed=6)
    return _lung_field_brightness(images), labels


@pytest.mark.parametrize("finding", [OPACITY, DIFFUSE])
def test_findings_make_the_lung_fields_measurably_brighter(
    finding: int, three_class_lung_brightness: tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]
) -> None:
    brightness, labels = three_class_lung_brightness
    with_finding, normal = brightness[labels == finding], brightness[labels == NORMAL]
    standard_error = np.sqrt(with_finding.var() / with_finding.size + normal.var() / normal.size)
    assert (with_finding.mean() - normal.mean()) / standard_error > 4.0


def test_a_single_brightness_feature_does_not_separate_the_classes() -> None:
    # Patient and acquisition variation must overlap with the findings, or
    # the classification task would be trivial.
    images, labels = generate_synthetic_xrays(600, 32, num_classes=2, seed=8)
    brightness = _lung_field_brightness(images)
    auc = _rank_auc(brightness[labels == OPACITY], brightness[labels == NORMAL])
    assert 0.5 < auc < 0.9


def test_class_names_follow_the_class_count() -> None:
    assert synthetic_class_names(2) == BINARY_CLASS_NAMES == ("NORMAL", "OPACITY")
    assert synthetic_class_names(3) == THREE_CLASS_NAMES == ("NORMAL", "OPACITY", "DIFFUSE")


def test_zero_images_is_an_empty_batch() -> None:
    images, labels = generate_synthetic_xrays(0, 16)
    assert images.shape == (0, 1, 16, 16)
    assert labels.shape == (0,)


@pytest.mark.parametrize(
    ("count", "image_size", "num_classes"), [(-1, 32, 2), (4, 8, 2), (4, 32, 4), (4, 32, 1)]
)
def test_invalid_arguments_raise_value_error(count: int, image_size: int, num_classes: int) -> None:
    with pytest.raises(ValueError):
        generate_synthetic_xrays(count, image_size, num_classes=num_classes)
