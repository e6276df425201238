"""This hospital's training and validation images, from the configured source.

Splits, logged at start:
- folder: `train/` trains; `val/` is the validation split (the per-round metrics the
  hospital reports) when present, else `test/`, else a random `validation_fraction` of
  `train/`. With `calibration_fraction`, that share of the validation split is kept apart
  for choosing the operating point.
- medmnist: the archive's train split trains and its val split validates.
- dicom and synthetic: a random `validation_fraction` of the images validates.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from services.common.protocol.class_roster import ClassRoster
from services.hospital_node.config import MEANINGFUL_VALIDATION, DataSettings
from services.hospital_node.data.partition import partition_indices
from services.hospital_node.data.synthetic_xray import (
    MAX_IMAGES_PER_PATIENT,
    generate_synthetic_xrays,
    synthetic_class_names,
    synthetic_patients,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalData:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    num_classes: int
    # Images kept apart from both, for choosing the operating point; empty when none.
    cal_images: torch.Tensor = torch.empty(0)
    cal_labels: torch.Tensor = torch.empty(0, dtype=torch.int64)
    # The class names in label order and the images of each class (all splits), sent when the node joins.
    classes: ClassRoster | None = None
    # The patient of each training image (an index local to this hospital), where the source knows patients;
    # None: the unit of record-level DP is the image.
    train_patients: torch.Tensor | None = None

    def privacy_units(self) -> torch.Tensor:
        """The unit of record-level DP of each training image: its patient where known, else the image itself."""
        if self.train_patients is not None:
            return self.train_patients
        return torch.arange(self.train_labels.numel())

    @property
    def privacy_unit(self) -> str:
        """"patient" or "image": what every epsilon this hospital reports protects."""
        return "patient" if self.train_patients is not None else "image"

    @property
    def unit_count(self) -> int:
        return int(torch.unique(self.privacy_units()).numel())


def _split(images: np.ndarray, labels: np.ndarray, fraction: float, *, seed: int, classes: int,
           calibration_fraction: float = 0.0, patients: np.ndarray | None = None) -> LocalData:
    """Train / validation split; `calibration_fraction` of the validation part becomes the calibration split;
    `patients`, each image's patient where known, follow the training images."""
    order = np.random.default_rng(seed).permutation(labels.size)
    cut = max(1, int(round(labels.size * fraction)))
    held, train = order[:cut], order[cut:]
    kept = 0
    if calibration_fraction > 0:
        if cut < 2:
            # Train and evaluate anyway; the consortium then publishes no operating point this run.
            log.warning("calibration_fraction %s needs at least 2 held-out images, this hospital holds out %d "
                        "of %d: keeping no calibration split", calibration_fraction, cut, labels.size)
        else:
            kept = min(max(int(round(cut * calibration_fraction)), 1), cut - 1)
    cal, val = held[:kept], held[kept:]
    return LocalData(torch.from_numpy(images[train]), torch.from_numpy(labels[train]),
                     torch.from_numpy(images[val]), torch.from_numpy(labels[val]), classes,
                     torch.from_numpy(images[cal]), torch.from_numpy(labels[cal]),
                     train_patients=None if patients is None else torch.from_numpy(patients[train]))


def load_local_data(settings: DataSettings) -> LocalData:
    seed = settings.synthetic_seed + settings.partition_index
    if settings.data_source == "synthetic":
        # Every node regenerates the same SYNTHETIC set from the shared seed and keeps its own part.
        images, labels = generate_synthetic_xrays(settings.synthetic_images, settings.image_size,
                                                  settings.num_classes, settings.synthetic_seed)
        parts = partition_indices(labels, settings.partition_parties, settings.partition_scheme,
                                  alpha=settings.partition_alpha, seed=settings.synthetic_seed)
        mine = parts[settings.partition_index]
        images, labels = images[mine], labels[mine]
        names, held, patients = synthetic_class_names(settings.num_classes), None, None
    else:
        images, labels, names, held, patients = _load_real(settings)
    all_labels = labels if held is None else np.concatenate([labels, held[1]])
    counts = tuple(int(c) for c in np.bincount(all_labels, minlength=settings.num_classes))
    classes = ClassRoster(names, counts)
    place = "" if settings.data_source == "synthetic" or settings.data_path is None else f" from {settings.data_path}"
    log.info("%s: %d images (%s%s), classes in label order: %s", settings.node_id, all_labels.size,
             settings.data_source, place, classes.table())
    if classes.empty_classes():
        log.warning("!!! %s has NO images of %s: it trains and validates without that class; check the class "
                    "folders and FEDXRAY_NODE_CLASS_NAMES !!!", settings.node_id, ", ".join(classes.empty_classes()))
    if held is None:
        log.info("validation: a random %.0f%% of the images (seed %d)%s", 100 * settings.validation_fraction, seed,
                 "; no val/ or test/ folder" if settings.data_source == "folder" else "")
        data = _split(images.astype(np.float32), labels.astype(np.int64), settings.validation_fraction, seed=seed,
                      classes=settings.num_classes, calibration_fraction=settings.calibration_fraction,
                      patients=patients)
        if settings.data_source == "synthetic":
            patients = synthetic_patients(data.train_labels.numpy(), seed)
            data = dataclasses.replace(data, train_patients=torch.from_numpy(patients))
            log.info("SYNTHETIC patients: %d training images of %d patients (1 to %d images each)",
                     patients.size, int(patients.max(initial=-1)) + 1, MAX_IMAGES_PER_PATIENT)
    else:
        data = _held_out(images, labels, held[0], held_labels=held[1], classes=settings.num_classes,
                         calibration_fraction=settings.calibration_fraction, seed=seed)
        if patients is not None:
            data = dataclasses.replace(data, train_patients=torch.from_numpy(patients))
    source_of_patients = ("the DICOM files' PatientID" if settings.data_source == "dicom"
                          else f"{_patients_file()} in the data folder")
    if data.train_patients is None:
        log.info("record-level DP, if on, protects each training image, not each patient: no patient identifiers "
                 "(%s names each image's patient%s)", source_of_patients,
                 "; a file without one makes the image the unit" if settings.data_source == "dicom" else "")
    elif settings.data_source != "synthetic":
        log.info("patients: %d training images of %d patients (from %s)", data.train_labels.numel(), data.unit_count,
                 source_of_patients)
    if settings.data_source != "synthetic":
        _warn_if_validation_is_thin(settings.node_id, data.val_labels, names)
    return dataclasses.replace(data, classes=classes)


def _warn_if_validation_is_thin(node_id: str, labels: torch.Tensor, names: tuple[str, ...]) -> None:
    """A loud warning (the launcher shows it on the console) when this hospital's validation split is too small
    for its metrics to mean anything: fewer than MEANINGFUL_VALIDATION images of a class, or none."""
    counts = np.bincount(labels.numpy(), minlength=len(names))
    thin = [f"{name}: {int(count)}" for name, count in zip(names, counts) if count < MEANINGFUL_VALIDATION]
    if thin:
        log.warning("!!! %s validates on %d images (%s): its metrics are not meaningful; give it a val/ folder "
                    "with at least %d images of each class !!!", node_id, labels.numel(), ", ".join(thin),
                    MEANINGFUL_VALIDATION)


def _patients_file() -> str:
    from services.hospital_node.data.image_loaders import PATIENTS_FILE  # noqa: PLC0415 (pydicom: only with real data)

    return PATIENTS_FILE


def _held_out(images: np.ndarray, labels: np.ndarray, held_images: np.ndarray, *, held_labels: np.ndarray,
              classes: int, calibration_fraction: float, seed: int) -> LocalData:
    """Train on one split and validate on another; `calibration_fraction` of the latter calibrates."""
    kept = 0
    if calibration_fraction > 0 and held_labels.size >= 2:
        kept = min(max(int(round(held_labels.size * calibration_fraction)), 1), held_labels.size - 1)
    order = np.random.default_rng(seed).permutation(held_labels.size)
    cal, val = order[:kept], order[kept:]
    as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return LocalData(as_tensor(images.astype(np.float32)), as_tensor(labels.astype(np.int64)),
                     as_tensor(held_images[val].astype(np.float32)), as_tensor(held_labels[val].astype(np.int64)),
                     classes, as_tensor(held_images[cal].astype(np.float32)),
                     as_tensor(held_labels[cal].astype(np.int64)))


def _load_real(settings: DataSettings) -> tuple[np.ndarray, np.ndarray, tuple[str, ...],
                                                         tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
    """The hospital's own training images and labels (labels in the consortium's class order), its class names,
    and its validation split when the source has one. A file that cannot be used is logged with its reason and
    skipped; a source the consortium cannot train on is refused by name."""
    from services.hospital_node.data import image_loaders

    if settings.data_path is None:
        raise image_loaders.DatasetFormatError(f"data_source={settings.data_source} needs FEDXRAY_NODE_DATA_PATH")
    held: image_loaders.LoadedDataset | None = None
    if settings.data_source == "folder":
        loaded = image_loaders.load_image_folder(settings.data_path, "train", settings.image_size,
                                                 class_names=settings.class_names,
                                                 allow_extra_folders=settings.allow_extra_folders)
        for split in ("val", "test"):
            if (settings.data_path / split).is_dir():
                held = image_loaders.load_image_folder(settings.data_path, split, settings.image_size,
                                                       class_names=loaded.class_names,
                                                       allow_extra_folders=settings.allow_extra_folders)
                log.info("training: %s/train (%d images); validation: %s/%s (%d images)%s", settings.data_path,
                         loaded.labels.size, settings.data_path, split, held.labels.size,
                         "; no val/ folder, so the per-round metrics are on test/" if split == "test" else "")
                break
    elif settings.data_source == "medmnist":
        loaded = image_loaders.load_medmnist_npz(settings.data_path, "train", settings.image_size)
        held = image_loaders.load_medmnist_npz(settings.data_path, "val", settings.image_size)
        log.info("training: the archive's train split (%d images); validation: its val split (%d images)",
                 loaded.labels.size, held.labels.size)
    else:
        loaded = image_loaders.load_dicom_class_folders(settings.data_path, settings.image_size,
                                                        settings.class_names, settings.allow_extra_folders)
    skipped_files = [*loaded.skipped, *(held.skipped if held else [])]
    for skipped in skipped_files:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
    if skipped_files:
        reasons = Counter(skipped.reason.split(":", 1)[0] for skipped in skipped_files)
        log.warning("!!! %s skipped %d files (%s); each is named in this log !!!", settings.node_id,
                    len(skipped_files), ", ".join(f"{count} {reason}" for reason, count in reasons.most_common()))
    if len(loaded.class_names) != settings.num_classes:
        # Labels are class indices; a hospital that numbers its classes differently trains the wrong classes.
        hint = ("; set FEDXRAY_NODE_CLASS_NAMES to the consortium's class names in label order"
                if settings.data_source != "medmnist" else "")
        raise image_loaders.DatasetFormatError(
            f"{settings.data_path}: {len(loaded.class_names)} classes {list(loaded.class_names)}, but the "
            f"consortium trains {settings.num_classes}{hint}")
    if loaded.labels.size == 0:
        raise image_loaders.DatasetFormatError(f"{settings.data_path}: no usable images "
                                               f"({len(loaded.skipped)} files skipped)")
    if held is not None and held.labels.size == 0:
        raise image_loaders.DatasetFormatError(f"{settings.data_path}: the validation split has no usable images "
                                               f"({len(held.skipped)} files skipped)")
    split = None if held is None else (held.images, held.labels)
    patients = (image_loaders.read_patients(settings.data_path, loaded.paths) if loaded.paths
                else loaded.patients)
    return loaded.images, loaded.labels, tuple(loaded.class_names), split, patients
