"""Load a hospital's chest X-rays into one array format, and prepare them for training.

Supported sources:

* an image folder in the Kaggle "Chest X-Ray Images (Pneumonia)" layout,
  ``root/split/CLASS/image.(png|jpg|jpeg)``;
* a MedMNIST ``.npz`` archive (PneumoniaMNIST, ChestMNIST; Yang et al.,
  "MedMNIST v2", Scientific Data 2023);
* a folder of DICOM files, read with pydicom and de-identified before the
  header leaves this module; a hospital's DICOM folder holds one folder per
  class, ``root/CLASS/...``.

Every loader returns a :class:`LoadedDataset` of float32 images shaped
``(n, 1, S, S)`` in ``[0, 1]``. A file that cannot be used is listed in
``skipped`` with the reason, so one bad file never aborts a hospital's load.
Images are resized to a square without keeping the aspect ratio, as is usual
for these public datasets.
"""

from __future__ import annotations


import copy
import csv
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Final, Sequence

import numpy as np
import numpy.typing as npt
import pydicom
import torch
import torch.nn.functional as F
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]

UNLABELLED: Final[int] = -1
IMAGE_EXTENSIONS: Final[frozenset[str]] = frozenset({".png", ".jpg", ".jpeg"})
MEDMNIST_SPLITS: Final[tuple[str, ...]] = ("train", "val", "test")
PNEUMONIAMNIST_CLASS_NAMES: Final[tuple[str, ...]] = ("NORMAL", "PNEUMONIA")
CHESTMNIST_CLASS_NAMES: Final[tuple[str, ...]] = ("NO_FINDING", "ANY_FINDING")
DICOM_DEFAULT_CLASS_NAMES: Final[tuple[str, ...]] = ("NORMAL", "ABNORMAL")


_PIXEL_KEYWORDS: Final[frozenset[str]] = frozenset({"PixelData", "FloatPixelData", "DoubleFloatPixelData"})
# Attributes that PS3.15 Annex E (Basic Application Level Confidentiality
# Profile) removes or blanks and that are not caught by the VR rules in
# _is_identifying (person names, dates, times, instance UIDs).
_IDENTIFYING_KEYWORDS: Final[frozenset[str]] = frozenset({
    "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "PatientAddress", "PatientTelephoneNumbers", "PatientSex", "PatientAge", "PatientSize",
    "PatientWeight", "MilitaryRank", "BranchOfService", "EthnicGroup", "Occupation",
    "MedicalRecordLocator", "AdditionalPatientHistory", "PatientComments",
    "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence",
    "CurrentPatientLocation", "PatientInsurancePlanCodeSequence", "ResponsibleOrganization",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "InstitutionCodeSequence", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "AccessionNumber", "StudyID", "StationName",
    "DeviceSerialNumber", "PlateID", "DetectorID", "GantryID", "CassetteID",
    "StudyDescription", "SeriesDescription", "ImageComments", "DerivationDescription",
    "RequestAttributesSequence", "ReferencedPatientSequence", "ReferencedStudySequence",
    "AdmissionID", "AdmittingDiagnosesDescription", "PerformedProcedureStepID",
    "PerformedProcedureStepDescription", "ScheduledProcedureStepID", "RequestedProcedureID",
    "TextComments",
})
_IDENTIFYING_VRS: Final[frozenset[str]] = frozenset({"PN", "DA", "DT", "TM"})


class DatasetFormatError(ValueError):
    """A file or folder that does not have the layout or content a loader expects."""


class NoPixelDataError(DatasetFormatError):
    """A DICOM file (a DICOMDIR, a structured report, ...) that holds no image."""


@dataclass(frozen=True)
class SkippedFile:
    path: str
    reason: str


@dataclass(frozen=True)
class LoadedDataset:
    images: FloatArray  # (n, 1, S, S), float32 in [0, 1]
    labels: LabelArray  # (n,), int64; UNLABELLED where no label is known
    class_names: tuple[str, ...]
    skipped: list[SkippedFile]
    # De-identified DICOM headers, one per image; empty for other formats.
    headers: list[Dataset] = field(default_factory=list)
    # Each image's path relative to the data folder ("train/NORMAL/a.png"), for folder data; empty otherwise.
    paths: list[str] = field(default_factory=list)
    # Each image's patient, numbered from 0 in order of appearance (DICOM's PatientID, never the ID itself); None
    # when the source has no patients or one of its images has none.
    patients: np.ndarray | None = None


@dataclass(frozen=True)
class DicomImage:
    pixels: FloatArray  # (rows, columns), float32 in [0, 1], 1 = bright (dense)
    header: Dataset  # de-identified, without pixel data
    # Who the image shows (IssuerOfPatientID and PatientID), only to group a patient's images for DP-SGD: it never
    # leaves the loader (load_dicom_folder numbers the patients); None when the file has no PatientID.
    patient: str | None = None


# --- image folders -----------------------------------------------------------


def load_image_folder(
    root: str | Path, split: str, image_size: int, *, class_names: Sequence[str] | None = None,
    allow_extra_folders: bool = False,
) -> LoadedDataset:
    """Load ``root/split/CLASS/*`` images; class names default to the sorted folder names. With class names given,
    a folder that is not one of them is an error naming the closest (unless `allow_extra_folders`: then skipped)."""
    split_folder = Path(root) / split
    if not split_folder.is_dir():
        raise DatasetFormatError(f"{split_folder}: no such split folder")
    entries = sorted(split_folder.iterdir())
    if class_names is None:
        class_names = _class_folder_names(split_folder)
    known_classes = tuple(class_names)
    if not allow_extra_folders:
        require_known_class_folders(split_folder, known_classes)
    skipped: list[SkippedFile] = []
    images: list[FloatArray] = []
    labels: list[int] = []
    paths: list[str] = []
    for entry in entries:
        if not entry.is_dir():
            skipped.append(SkippedFile(str(entry), "file is not inside a class folder"))
            continue
        if entry.name not in known_classes:
            skipped.append(SkippedFile(
                str(entry), f"folder {entry.name!r} is not a known class {known_classes}"))
            continue
        for path in sorted(entry.iterdir()):
            if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append(SkippedFile(str(path), "not a .png/.jpg/.jpeg file"))
                continue
            try:
                pixels = read_picture(path)
            except DatasetFormatError as error:
                skipped.append(SkippedFile(str(path), str(error)))
                continue
            images.append(_resize_batch(pixels[None, None], image_size)[0])
            labels.append(known_classes.index(entry.name))
            paths.append(f"{split}/{entry.name}/{path.name}")
    return LoadedDataset(_stack(images, image_size), np.asarray(labels, dtype=np.int64),
                         known_classes, skipped, paths=paths)


PATIENTS_FILE = "patients.csv"


def read_patients(root: str | Path, paths: Sequence[str]) -> np.ndarray | None:
    """The patient of each image in `paths`, numbered from 0, from `root/patients.csv` (a header `image,patient`,
    then one line per image: its path below `root`, such as `train/NORMAL/a.png`, and a patient identifier); None
    when there is no such file. An image the file does not name is an error naming it: a patient counted as
    two would double what DP-SGD lets one patient change."""
    path = Path(root) / PATIENTS_FILE
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"image", "patient"} <= set(rows[0]):
        raise DatasetFormatError(f"{path}: the header must name the columns image and patient")
    patient_of = {row["image"].strip(): row["patient"].strip() for row in rows}
    missing = [p for p in paths if p not in patient_of]
    if missing:
        raise DatasetFormatError(f"{path} names no patient for {len(missing)} images, such as {missing[0]}")
    return patient_numbers([patient_of[p] for p in paths])


STORED_BITS = (8, 10, 12, 14, 16)


def stored_bits(maximum: float) -> int:
    """The bit depth a 16-bit greyscale image's values were stored at, read from its own maximum (a PNG has no
    BitsStored): a 12-bit radiograph saved as 16-bit has values up to 4095, and is scaled by 4095, not 65535."""
    return next((bits for bits in STORED_BITS if maximum <= 2 ** bits - 1), STORED_BITS[-1])


def read_picture(path: str | Path) -> FloatArray:
    """One PNG/JPEG as a 2-D float32 array in [0, 1]; colour is converted to grey, and 16-bit greyscale is scaled
    by the bit depth its values use (`stored_bits`)."""
    try:
        with Image.open(path) as picture:
            picture.load()  # decode now, so a truncated file fails here
            if picture.mode.startswith("I"):
                # 16-bit greyscale PNG (common for radiographs), often holding 10-, 12- or 14-bit data.
                pixels = np.asarray(picture, dtype=np.float64)
                pixels = pixels / (2 ** stored_bits(float(pixels.max(initial=0.0))) - 1)
            else:
                pixels = np.asarray(picture.convert("L"), dtype=np.float64) / 255.0
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        raise DatasetFormatError(f"unreadable image: {error}") from error
    return np.clip(pixels, 0.0, 1.0).astype(np.float32)


def require_known_class_folders(folder: Path, known_classes: Sequence[str]) -> None:
    """Refuse a class folder that is not a known class, naming it and the closest known name: a misspelled folder
    would otherwise be skipped (a hospital with one class) or taken as a class of its own."""
    for name in _class_folder_names(folder):
        if name in known_classes:
            continue
        close = difflib.get_close_matches(name.upper(), [c.upper() for c in known_classes], n=1, cutoff=0.5)
        closest = next((c for c in known_classes if close and c.upper() == close[0]), None)
        hint = f"; did you mean {closest!r}? Rename the folder" if closest else ""
        raise DatasetFormatError(
            f"{folder / name}: folder {name!r} is not one of the class names {list(known_classes)}{hint} "
            "(or set FEDXRAY_NODE_ALLOW_EXTRA_FOLDERS=true to skip folders that are not classes)")


def _class_folder_names(folder: Path) -> list[str]:
    """The class folders directly below ``folder``, sorted: the default class names."""
    return [entry.name for entry in sorted(folder.iterdir()) if entry.is_dir() and not _is_hidden(entry)]


def _is_hidden(path: Path) -> bool:
    return path.name.startswith((".", "__"))


# --- MedMNIST ------------------------------------------------------------------


def load_medmnist_npz(path: str | Path, split: str, image_size: int) -> LoadedDataset:
    """Load one split of a MedMNIST archive as a binary task.

    One label column (PneumoniaMNIST) is used as is: 0 = normal, 1 = pneumonia.
    Several columns (ChestMNIST: 14 NIH ChestX-ray14 findings, multi-label)
    become "any finding": 1 when at least one finding is present.
    """
    if split not in MEDMNIST_SPLITS:
        raise ValueError(f"split must be one of {MEDMNIST_SPLITS}, got {split!r}")
    image_key, label_key = f"{split}_images", f"{split}_labels"
    with np.load(path, allow_pickle=False) as archive:
        for key in (image_key, label_key):
            if key not in archive.files:
                raise DatasetFormatError(
                    f"{path}: missing key {key!r} (found {sorted(archive.files)})")
        raw_images = archive[image_key]
        raw_labels = archive[label_key]
    images = _medmnist_images(raw_images, path)
    labels, class_names = _medmnist_binary_labels(raw_labels, path)
    if labels.size != images.shape[0]:
        raise DatasetFormatError(
            f"{path}: {images.shape[0]} images but {labels.size} labels in split {split!r}")
    return LoadedDataset(_resize_batch(images[:, None], image_size), labels, class_names, [])


def _medmnist_images(raw: npt.NDArray[Any], path: str | Path) -> FloatArray:
    full_scale = float(np.iinfo(raw.dtype).max) if np.issubdtype(raw.dtype, np.integer) else 1.0
    scaled = np.asarray(raw, dtype=np.float64) / full_scale
    if scaled.ndim == 4 and scaled.shape[-1] in (1, 3):
        scaled = scaled.mean(axis=-1)  # MedMNIST stores colour as a trailing channel axis
    if scaled.ndim != 3:
        raise DatasetFormatError(f"{path}: images must be (n, H, W[, C]), got {raw.shape}")
    images: FloatArray = np.clip(scaled, 0.0, 1.0).astype(np.float32)
    return images


def _medmnist_binary_labels(
    raw: npt.NDArray[Any], path: str | Path
) -> tuple[LabelArray, tuple[str, ...]]:
    columns = raw.reshape(raw.shape[0], -1) if raw.ndim else raw.reshape(0, 1)
    if not np.all((columns == 0) | (columns == 1)):
        raise DatasetFormatError(f"{path}: expected 0/1 labels, found values {np.unique(columns)}")
    if columns.shape[1] == 1:
        return np.asarray(columns[:, 0], dtype=np.int64), PNEUMONIAMNIST_CLASS_NAMES
    return np.asarray(columns.any(axis=1), dtype=np.int64), CHESTMNIST_CLASS_NAMES


# --- DICOM -------------------------------------------------------------------------


def read_dicom(path: str | Path) -> DicomImage:
    """Read one single-frame greyscale DICOM image and its de-identified header.

    Raises :class:`DatasetFormatError` (or :class:`NoPixelDataError`) for
    files that are not DICOM, hold no image, or cannot be decoded.
    """
    try:
        dataset = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as error:
        raise DatasetFormatError(f"not a readable DICOM file: {error}") from error
    if not any(keyword in dataset for keyword in _PIXEL_KEYWORDS):
        raise NoPixelDataError("DICOM file has no pixel data")
    return DicomImage(dicom_pixels_to_unit_range(dataset), deidentify(dataset), _patient_key(dataset))


def _patient_key(dataset: Dataset) -> str | None:
    """The patient a DICOM file shows, as its issuer and ID (one ID may recur across issuers); None without an ID."""
    patient_id = str(dataset.get("PatientID", "") or "").strip()
    if not patient_id:
        return None
    return f"{str(dataset.get('IssuerOfPatientID', '') or '').strip()}\x00{patient_id}"


def patient_numbers(keys: Sequence[str | None]) -> np.ndarray | None:
    """Patients numbered from 0 in order of appearance; None when any image has no patient (an image without its
    patient could be the same patient's as another's, so only the image can be the unit then)."""
    if any(key is None for key in keys):
        return None
    numbers: dict[str, int] = {}
    return np.asarray([numbers.setdefault(key, len(numbers)) for key in keys if key is not None], dtype=np.int64)


def dicom_pixels_to_unit_range(dataset: Dataset) -> FloatArray:
    """Stored values -> modality LUT -> VOI LUT or window -> [0, 1], MONOCHROME1 inverted."""
    photometric = str(dataset.get("PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DatasetFormatError(f"unsupported PhotometricInterpretation {photometric!r}")
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1:
        raise DatasetFormatError("multi-frame DICOM images are not supported")
    try:
        stored = dataset.pixel_array
    except Exception as error:  # pydicom raises many types for undecodable data
        raise DatasetFormatError(f"cannot decode pixel data: {error}") from error
    values = apply_modality_lut(stored.astype(np.float64), dataset)
    if "VOILUTSequence" in dataset:
        lut = np.asarray(dataset.VOILUTSequence[0].LUTData, dtype=np.float64)
        unit = _stretch(apply_voi_lut(values, dataset, prefer_lut=True), float(lut.min()), float(lut.max()))
    elif "WindowCenter" in dataset and "WindowWidth" in dataset:
        unit = window_to_unit_range(
            values,
            _first_value(dataset.WindowCenter),
            _first_value(dataset.WindowWidth),
            str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR"),
        )
    else:
        unit = _stretch(values, float(values.min()), float(values.max()))
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit  # MONOCHROME1: the lowest value is displayed white
    return unit.astype(np.float32)


def window_to_unit_range(
    values: npt.NDArray[np.floating], center: float, width: float, function: str = "LINEAR"
) -> npt.NDArray[np.float64]:
    """Apply a DICOM VOI window (PS3.3 C.11.2.1.2-3) with output range [0, 1]."""
    x = np.asarray(values, dtype=np.float64)
    if function == "LINEAR":
        if width < 1:
            raise DatasetFormatError(f"LINEAR window width must be >= 1, got {width}")
        if width == 1:  # degenerate window: a threshold at center - 0.5
            return (x > center - 0.5).astype(np.float64)
        return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if function == "LINEAR_EXACT":
        if width <= 0:
            raise DatasetFormatError(f"LINEAR_EXACT window width must be > 0, got {width}")
        return np.clip((x - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        if width <= 0:
            raise DatasetFormatError(f"SIGMOID window width must be > 0, got {width}")
        return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
    raise DatasetFormatError(f"unknown VOILUTFunction {function!r}")


def deidentify(dataset: Dataset) -> Dataset:
    """A copy of the header without pixel data and without identifying attributes.

    In the spirit of the PS3.15 Annex E basic profile: removes private tags,
    person names, dates and times, instance UIDs, overlays (they may carry
    burned-in text) and the attributes in ``_IDENTIFYING_KEYWORDS``, at every
    sequence depth. The file meta header is not copied. Identifying text burned
    into the pixels themselves is NOT detected. The input is not modified.
    """
    header = Dataset()
    for element in dataset:
        if element.keyword not in _PIXEL_KEYWORDS:
            header.add(copy.deepcopy(element))
    header.walk(_delete_if_identifying)
    header.PatientIdentityRemoved = "YES"
    header.DeidentificationMethod = "FedXray: PS3.15 basic profile subset (removal only)"
    return header


def _delete_if_identifying(dataset: Dataset, element: DataElement) -> None:
    if _is_identifying(element):
        del dataset[element.tag]


def _is_identifying(element: DataElement) -> bool:
    tag = element.tag
    is_overlay = 0x6000 <= tag.group <= 0x60FF
    keyword = element.keyword
    is_instance_uid = element.VR == "UI" and not keyword.endswith("ClassUID") and keyword != "TransferSyntaxUID"
    return (tag.is_private or is_overlay or is_instance_uid
            or element.VR in _IDENTIFYING_VRS or keyword in _IDENTIFYING_KEYWORDS)


def load_dicom_folder(
    root: str | Path,
    image_size: int,
    label_for_path: Callable[[Path], int] | None = None,
    class_names: Sequence[str] = DICOM_DEFAULT_CLASS_NAMES,
) -> LoadedDataset:
    """Load every DICOM image below ``root`` (any file name; DICOM often has none).

    ``label_for_path`` maps a file to its class index; without it every label
    is ``UNLABELLED``. A file whose label cannot be found is skipped.
    """
    known_classes = tuple(class_names)
    skipped: list[SkippedFile] = []
    images: list[FloatArray] = []
    labels: list[int] = []
    headers: list[Dataset] = []
    patients: list[str | None] = []
    for path in sorted(candidate for candidate in Path(root).rglob("*") if candidate.is_file()):
        try:  # the label first, so that a file no class wants is skipped without decoding its pixels
            label = UNLABELLED if label_for_path is None else _checked_label(
                label_for_path(path), len(known_classes))
            image = read_dicom(path)
        except (ValueError, LookupError) as error:  # DatasetFormatError is a ValueError
            skipped.append(SkippedFile(str(path), str(error)))
            continue
        images.append(_resize_batch(image.pixels[None, None], image_size)[0])
        labels.append(label)
        headers.append(image.header)
        patients.append(image.patient)
    return LoadedDataset(_stack(images, image_size), np.asarray(labels, dtype=np.int64),
                         known_classes, skipped, headers, patients=patient_numbers(patients))


def load_dicom_class_folders(
    root: str | Path, image_size: int, class_names: Sequence[str] | None = None, allow_extra_folders: bool = False
) -> LoadedDataset:
    """Load ``root/CLASS/**`` DICOM files, labelled by the class folder they lie in.

    Class names default to the sorted folder names, as for image folders. A file
    outside a class folder, or in a folder that is not a known class, is skipped.
    """
    base = Path(root)
    if not base.is_dir():
        raise DatasetFormatError(f"{base}: no such DICOM folder")
    if class_names is None:
        class_names = _class_folder_names(base)
    known_classes = tuple(class_names)
    if not allow_extra_folders:
        require_known_class_folders(base, known_classes)

    def label_for_path(path: Path) -> int:
        parts = path.relative_to(base).parts
        if len(parts) < 2:
            raise DatasetFormatError("file is not inside a class folder")
        if parts[0] not in known_classes:
            raise DatasetFormatError(f"folder {parts[0]!r} is not a known class {known_classes}")
        return known_classes.index(parts[0])

    return load_dicom_folder(base, image_size, label_for_path, known_classes)


def _checked_label(label: int, class_count: int) -> int:
    if not 0 <= label < class_count:
        raise DatasetFormatError(f"label {label} outside [0, {class_count})")
    return int(label)


def _first_value(value: object) -> float:
    """Window attributes may hold several windows (a MultiValue); the first is the default."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return float(value[0])
    return float(value)  # type: ignore[arg-type]


def _stretch(values: npt.NDArray[np.floating], low: float, high: float) -> npt.NDArray[np.float64]:
    """Map [low, high] onto [0, 1]; a constant image becomes all zeros."""
    if high <= low:
        return np.zeros(np.shape(values), dtype=np.float64)
    return np.clip((np.asarray(values, dtype=np.float64) - low) / (high - low), 0.0, 1.0)


def load_for_prediction(path: str | Path, image_size: int) -> FloatArray:
    """One image file as the model sees it, ``(1, S, S)`` in [0, 1]: a .dcm file as the DICOM loaders read it, any
    other as the folder loader does, resized alike (`scripts.predict`)."""
    pixels = read_dicom(path).pixels if Path(path).suffix.lower() == ".dcm" else read_picture(path)
    return _resize_batch(pixels[None, None], image_size)[0]


# --- preprocessing and augmentation -------------------------------------------------


def _resize_batch(images: FloatArray, image_size: int) -> FloatArray:
    """Bilinear resize of ``(n, 1, H, W)`` to ``(n, 1, S, S)``, antialiased when shrinking."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    if images.shape[-2:] == (image_size, image_size):
        return images.astype(np.float32, copy=False)
    if images.shape[0] == 0:
        return np.zeros((0, 1, image_size, image_size), dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    resized = F.interpolate(tensor, size=(image_size, image_size), mode="bilinear",
                            align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0).numpy()


def _stack(images: list[FloatArray], image_size: int) -> FloatArray:
    if not images:
        return np.zeros((0, 1, image_size, image_size), dtype=np.float32)
    return np.stack(images).astype(np.float32)
