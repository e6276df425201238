"""Specification of the hospital-side image loaders, preprocessing and augmentation."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from services.hospital_node.data.image_loaders import (
    UNLABELLED,
    DatasetFormatError,
    NoPixelDataError,
    deidentify,
    load_dicom_folder,
    load_image_folder,
    load_medmnist_npz,
    read_dicom,
    window_to_unit_range,
)
from services.hospital_node.data.image_preprocessing import augment_batch, equalize_histogram, median_filter_3x3, preprocess
from tests.hospital_node.image_files import CT_SMALL, DICOMDIR, MR_SMALL, RT_PLAN, pydicom_file, write_grey_png


def _all_tags(dataset: Dataset) -> list[pydicom.tag.BaseTag]:
    tags: list[pydicom.tag.BaseTag] = []
    dataset.walk(lambda _, element: tags.append(element.tag))
    return tags


# --- image folders -------------------------------------------------------------------


@pytest.fixture
def kaggle_folder(tmp_path: Path) -> Path:
    train = tmp_path / "train"
    write_grey_png(train / "NORMAL" / "a.png", 51)
    Image.fromarray(np.full((12, 16, 3), 255, dtype=np.uint8)).save(train / "NORMAL" / "b.jpg")
    write_grey_png(train / "PNEUMONIA" / "c.png", 204)
    write_grey_png(train / "PNEUMONIA" / "d.png", 100, size=(64, 64))
    whole = (train / "PNEUMONIA" / "d.png").read_bytes()
    (train / "PNEUMONIA" / "d.png").write_bytes(whole[: len(whole) // 2])  # truncated
    write_grey_png(train / "COVID" / "e.png", 10)  # a label this hospital does not train on
    return tmp_path


def test_folder_loader_loads_good_images_and_reports_bad_file_and_unknown_folder(kaggle_folder: Path) -> None:
    # A folder that is not a named class is an error, unless extra folders are allowed: then it is skipped.
    with pytest.raises(DatasetFormatError, match=r"folder 'COVID' is not one of the class names.*ALLOW_EXTRA"):
        load_image_folder(kaggle_folder, "train", image_size=16, class_names=("NORMAL", "PNEUMONIA"))
    dataset = load_image_folder(kaggle_folder, "train", image_size=16, class_names=("NORMAL", "PNEUMONIA"),
                                allow_extra_folders=True)
    assert dataset.images.shape == (3, 1, 16, 16)
    assert dataset.images.dtype == np.float32
    np.testing.assert_array_equal(dataset.labels, [0, 0, 1])
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    # Uniform grey 51/255 = 0.2, white JPEG = 1.0, grey 204/255 = 0.8 (resizing keeps a flat image flat).
    np.testing.assert_allclose(dataset.images[:, 0].mean(axis=(1, 2)), [0.2, 1.0, 0.8], atol=0.01)
    reasons = {Path(skipped.path).name: skipped.reason for skipped in dataset.skipped}
    assert set(reasons) == {"d.png", "COVID"}
    assert "unreadable image" in reasons["d.png"]
    assert "not a known class" in reasons["COVID"]


def test_folder_loader_takes_class_names_from_sorted_folders(kaggle_folder: Path) -> None:
    dataset = load_image_folder(kaggle_folder, "train", image_size=8)
    assert dataset.class_names == ("COVID", "NORMAL", "PNEUMONIA")
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1, 2])
    assert [Path(skipped.path).name for skipped in dataset.skipped] == ["d.png"]


def test_folder_loader_scales_16_bit_png_by_full_scale(tmp_path: Path) -> None:
    path = tmp_path / "test" / "NORMAL" / "deep.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(np.full((10, 10), 16384, dtype=np.uint16)).save(path)
    dataset = load_image_folder(tmp_path, "test", image_size=10)
    np.testing.assert_allclose(dataset.images, 16384 / 65535, atol=1e-6)


def test_a_12_bit_radiograph_saved_as_16_bit_png_loads_at_full_range(tmp_path: Path) -> None:
    """Scaled by 65535 it would load at 1/16 of its brightness (a maximum of 0.062): it is scaled by 4095."""
    path = tmp_path / "test" / "NORMAL" / "twelve.png"
    path.parent.mkdir(parents=True)
    pixels = np.zeros((10, 10), dtype=np.uint16)
    pixels[:5], pixels[5:] = 2048, 4095
    Image.fromarray(pixels).save(path)
    dataset = load_image_folder(tmp_path, "test", image_size=10)
    assert dataset.images.max() == pytest.approx(1.0)
    np.testing.assert_allclose(dataset.images[0, 0, 0], 2048 / 4095, atol=1e-6)


def test_folder_loader_reports_stray_files_and_refuses_a_missing_split(tmp_path: Path) -> None:
    write_grey_png(tmp_path / "val" / "NORMAL" / "a.png", 1)
    (tmp_path / "val" / "NORMAL" / "notes.txt").write_text("not an image")
    (tmp_path / "val" / "README").write_text("not in a class folder")
    dataset = load_image_folder(tmp_path, "val", image_size=4)
    assert len(dataset.labels) == 1
    assert sorted(Path(skipped.path).name for skipped in dataset.skipped) == ["README", "notes.txt"]
    with pytest.raises(DatasetFormatError, match="no such split folder"):
        load_image_folder(tmp_path, "train", image_size=4)


# --- MedMNIST ----------------------------------------------------------------------


def test_pneumoniamnist_layout_keeps_its_binary_labels(tmp_path: Path) -> None:
    path = tmp_path / "pneumoniamnist.npz"
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    images[1] = 255
    np.savez(path, train_images=images, train_labels=np.array([[0], [1], [1], [0], [1]], dtype=np.uint8))
    dataset = load_medmnist_npz(path, "train", image_size=32)
    assert dataset.images.shape == (5, 1, 32, 32)
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1, 0, 1])
    assert dataset.labels.dtype == np.int64
    assert dataset.class_names == ("NORMAL", "PNEUMONIA")
    assert dataset.images[1].min() == pytest.approx(1.0) and dataset.images[0].max() == 0.0


def test_chestmnist_multilabel_becomes_any_finding(tmp_path: Path) -> None:
    path = tmp_path / "chestmnist.npz"
    labels = np.zeros((4, 14), dtype=np.uint8)
    labels[1, 3] = 1
    labels[2, [0, 13]] = 1
    np.savez(path, test_images=np.full((4, 28, 28, 1), 128, dtype=np.uint8), test_labels=labels)
    dataset = load_medmnist_npz(path, "test", image_size=28)
    np.testing.assert_array_equal(dataset.labels, [0, 1, 1, 0])
    assert dataset.class_names == ("NO_FINDING", "ANY_FINDING")
    np.testing.assert_allclose(dataset.images, 128 / 255, atol=1e-6)


def test_medmnist_missing_key_names_the_file_and_the_key(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    np.savez(path, val_images=np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"broken\.npz.*'val_labels'"):
        load_medmnist_npz(path, "val", image_size=28)


def test_medmnist_refuses_an_unknown_split_and_non_binary_labels(tmp_path: Path) -> None:
    path = tmp_path / "organ.npz"
    np.savez(path, train_images=np.zeros((2, 28, 28), dtype=np.uint8), train_labels=np.array([[0], [5]]))
    with pytest.raises(ValueError, match="split"):
        load_medmnist_npz(path, "training", image_size=28)
    with pytest.raises(DatasetFormatError, match="0/1 labels"):
        load_medmnist_npz(path, "train", image_size=28)


# --- DICOM -------------------------------------------------------------------------


def test_deidentify_removes_patient_identity_and_private_tags() -> None:
    original = pydicom.dcmread(pydicom_file(CT_SMALL))
    assert "PatientName" in original and any(tag.is_private for tag in _all_tags(original))
    header = deidentify(original)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "InstitutionName", "StudyID",
                    "AccessionNumber", "ReferringPhysicianName", "StudyInstanceUID", "SOPInstanceUID",
                    "StudyDate", "StationName", "PixelData"):
        assert keyword not in header, keyword
    assert not any(tag.is_private for tag in _all_tags(header))
    assert header.PatientIdentityRemoved == "YES"
    assert header.Modality == "CT" and header.Rows == 128  # non-identifying facts survive
    assert header.SOPClassUID == original.SOPClassUID
    assert str(original.PatientName) == "CompressedSamples^CT1"  # the input is untouched


def test_deidentify_reaches_into_nested_sequences() -> None:
    item = Dataset()
    item.PatientName = "Doe^Jane"
    item.PatientID = "12345"
    item.CodeValue = "KEEP"
    item.add_new(0x00091001, "LO", "private detail")
    outer = Dataset()
    outer.ReferencedImageSequence = DicomSequence([item])
    header = deidentify(outer)
    (nested,) = header.ReferencedImageSequence
    assert "PatientName" not in nested and "PatientID" not in nested
    assert not any(tag.is_private for tag in _all_tags(header))
    assert nested.CodeValue == "KEEP"


def test_read_dicom_without_window_stretches_to_full_range() -> None:
    stored = pydicom.dcmread(pydicom_file(CT_SMALL)).pixel_array.astype(np.float64)
    image = read_dicom(pydicom_file(CT_SMALL))
    # A positive linear rescale (slope 1, intercept -1024) cancels in a min-max stretch.
    expected = (stored - stored.min()) / (stored.max() - stored.min())
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)
    assert "PatientName" not in image.header


def test_read_dicom_applies_the_window_in_the_header() -> None:
    stored = pydicom.dcmread(pydicom_file(MR_SMALL)).pixel_array.astype(np.float64)
    pixels = read_dicom(pydicom_file(MR_SMALL)).pixels
    # Centre 600, width 1600 (LINEAR): values above 600 - 0.5 + 799.5 = 1399 are white,
    # and in between y = (x - 599.5) / 1599 + 0.5.
    assert np.all(pixels[stored > 1399] == 1.0)
    darkest = stored == stored.min()
    np.testing.assert_allclose(pixels[darkest], (stored.min() - 599.5) / 1599 + 0.5, atol=1e-6)


def test_a_narrower_window_saturates_more_pixels(tmp_path: Path) -> None:
    dataset = pydicom.dcmread(pydicom_file(MR_SMALL))
    dataset.WindowCenter, dataset.WindowWidth = 600, 200
    dataset.save_as(tmp_path / "narrow.dcm")
    default = read_dicom(pydicom_file(MR_SMALL)).pixels
    narrow = read_dicom(tmp_path / "narrow.dcm").pixels
    assert (narrow == 1.0).sum() > (default == 1.0).sum()


def test_window_formulas_match_hand_computed_values() -> None:
    values = np.array([0.0, 74.5, 99.5, 112.0, 124.5, 200.0])
    # LINEAR, centre 100, width 51: 0 below 74.5, 1 above 124.5, (x - 99.5)/50 + 0.5 between.
    np.testing.assert_allclose(window_to_unit_range(values, 100, 51), [0, 0, 0.5, 0.75, 1, 1])
    # LINEAR_EXACT, centre 100, width 50: (x - 100)/50 + 0.5, clipped.
    np.testing.assert_allclose(
        window_to_unit_range(values, 100, 50, "LINEAR_EXACT"), [0, 0, 0.49, 0.74, 0.99, 1])
    # SIGMOID, centre 100, width 40: 1 / (1 + exp(-4 (x - 100) / 40)); at x = 100 it is 1/2.
    np.testing.assert_allclose(window_to_unit_range(np.array([100.0]), 100, 40, "SIGMOID"), [0.5])
    with pytest.raises(DatasetFormatError):
        window_to_unit_range(values, 100, 0.5)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    # pydicom bundles no MONOCHROME1 image, so a real CT file is relabelled.
    dataset = pydicom.dcmread(pydicom_file(CT_SMALL))
    dataset.PhotometricInterpretation = "MONOCHROME1"
    dataset.save_as(tmp_path / "inverted.dcm")
    normal = read_dicom(pydicom_file(CT_SMALL)).pixels
    inverted = read_dicom(tmp_path / "inverted.dcm").pixels
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_real_file_without_pixel_data_raises_a_named_error() -> None:
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        read_dicom(pydicom_file(RT_PLAN))


def test_dicom_folder_loads_images_and_skips_files_without_pixels(tmp_path: Path) -> None:
    shutil.copy(pydicom_file(CT_SMALL), tmp_path / "ct")
    shutil.copy(pydicom_file(MR_SMALL), tmp_path / "mr")
    shutil.copy(pydicom_file(RT_PLAN), tmp_path / "plan")
    shutil.copy(pydicom_file(DICOMDIR), tmp_path / "DICOMDIR")
    stripped = pydicom.dcmread(pydicom_file(MR_SMALL))
    del stripped.PixelData
    stripped.save_as(tmp_path / "header_only")
    (tmp_path / "notes.txt").write_text("not DICOM")

    dataset = load_dicom_folder(tmp_path, image_size=32, label_for_path=lambda path: int(path.name == "ct"))
    assert dataset.images.shape == (2, 1, 32, 32)
    np.testing.assert_array_equal(dataset.labels, [1, 0])  # sorted: ct, mr
    assert len(dataset.headers) == 2
    assert all("PatientName" not in header and "PatientID" not in header for header in dataset.headers)
    reasons = {Path(skipped.path).name: skipped.reason for skipped in dataset.skipped}
    assert set(reasons) == {"plan", "DICOMDIR", "header_only", "notes.txt"}
    for name in ("plan", "DICOMDIR", "header_only"):
        assert "no pixel data" in reasons[name]
    assert "not a readable DICOM file" in reasons["notes.txt"]


def test_dicom_folder_without_labeller_marks_images_unlabelled_and_skips_bad_labels(tmp_path: Path) -> None:
    shutil.copy(pydicom_file(CT_SMALL), tmp_path / "ct")
    unlabelled = load_dicom_folder(tmp_path, image_size=8)
    np.testing.assert_array_equal(unlabelled.labels, [UNLABELLED])
    out_of_range = load_dicom_folder(tmp_path, image_size=8, label_for_path=lambda _: 7)
    assert out_of_range.images.shape == (0, 1, 8, 8)
    assert "label 7" in out_of_range.skipped[0].reason


# --- preprocessing and augmentation -------------------------------------------------------


def test_preprocess_resizes_and_keeps_the_unit_range() -> None:
    images = np.random.default_rng(0).uniform(0, 1, size=(3, 1, 40, 30)).astype(np.float32)
    result = preprocess(images, image_size=16, denoise=True, enhance_contrast=True)
    assert result.shape == (3, 1, 16, 16) and result.dtype == np.float32
    assert result.min() >= 0.0 and result.max() <= 1.0
    with pytest.raises(ValueError):
        preprocess(images[:, 0], image_size=16)


def test_median_filter_removes_isolated_salt_and_keeps_edges() -> None:
    image = np.zeros((1, 1, 7, 7), dtype=np.float32)
    image[0, 0, :, 4:] = 1.0  # a vertical edge
    image[0, 0, 3, 1] = 1.0  # one hot pixel
    filtered = median_filter_3x3(image)
    expected = np.zeros((7, 7), dtype=np.float32)
    expected[:, 4:] = 1.0
    np.testing.assert_array_equal(filtered[0, 0], expected)


def test_histogram_equalization_spreads_a_narrow_range_and_keeps_order() -> None:
    narrow = np.linspace(0.4, 0.6, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    equalized = equalize_histogram(narrow)
    assert equalized.min() == 0.0 and equalized.max() == 1.0
    assert np.all(np.diff(equalized.ravel()) >= 0)  # monotone mapping
    constant = np.full((1, 1, 4, 4), 0.3, dtype=np.float32)
    np.testing.assert_array_equal(equalize_histogram(constant), constant)


def test_augmentation_is_reproducible_from_the_generator() -> None:
    images = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    first = augment_batch(images, torch.Generator().manual_seed(5))
    second = augment_batch(images, torch.Generator().manual_seed(5))
    other = augment_batch(images, torch.Generator().manual_seed(6))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert first.shape == images.shape
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_augmentation_never_mirrors_the_chest() -> None:
    # The bright block stands for the heart on the image's right side.
    images = torch.full((64, 1, 32, 32), 0.2)
    images[:, :, 8:24, 20:28] = 0.9
    augmented = augment_batch(images, torch.Generator().manual_seed(1))
    right, left = augmented[..., 16:].mean(dim=(1, 2, 3)), augmented[..., :16].mean(dim=(1, 2, 3))
    assert bool(torch.all(right > left + 0.1))
    mirrored = torch.flip(images, dims=[-1])
    assert float((augmented - images).abs().mean()) < float((augmented - mirrored).abs().mean())
