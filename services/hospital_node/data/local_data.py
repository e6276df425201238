"""This hospital's training and validation images, from the configured source."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from services.hospital_node.data.partition import partition_indices
from services.hospital_node.data.synthetic_xray import generate_synthetic_xrays
from services.hospital_node.config import HospitalNodeSettings

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


def _split(images: np.ndarray, labels: np.ndarray, fraction: float, seed: int, classes: int,
           calibration_fraction: float = 0.0) -> LocalData:
    """Train / validation split; `calibration_fraction` of the validation part becomes the calibration split."""
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
                     torch.from_numpy(images[cal]), torch.from_numpy(labels[cal]))


def load_local_data(settings: HospitalNodeSettings) -> LocalData:
    if settings.data_source == "synthetic":
        # Every node regenerates the same SYNTHETIC set from the shared seed and keeps its own part.
        images, labels = generate_synthetic_xrays(settings.synthetic_images, settings.image_size,
                                                  settings.num_classes, settings.synthetic_seed)
        parts = partition_indices(labels, settings.partition_parties, settings.partition_scheme,
                                  settings.partition_alpha, settings.synthetic_seed)
        mine = parts[settings.partition_index]
        images, labels = images[mine], labels[mine]
    else:
        images, labels = _load_real(settings)
    counts = np.bincount(labels, minlength=settings.num_classes)
    log.info("%s: %d images (%s), class counts %s", settings.node_id, labels.size, settings.data_source,
             counts.tolist())
    return _split(images.astype(np.float32), labels.astype(np.int64), settings.validation_fraction,
                  settings.synthetic_seed + settings.partition_index, settings.num_classes,
                  settings.calibration_fraction)


def _load_real(settings: HospitalNodeSettings) -> tuple[np.ndarray, np.ndarray]:
    """The hospital's own images and labels, with labels in the consortium's class order; a file that cannot be
    used is logged with its reason and skipped, a source the consortium cannot train on is refused by name."""
    from services.hospital_node.data import image_loaders

    if settings.data_path is None:
        raise ValueError(f"data_source={settings.data_source} needs FEDXRAY_NODE_DATA_PATH")
    if settings.data_source == "folder":
        loaded = image_loaders.load_image_folder(settings.data_path, "train", settings.image_size,
                                                 settings.class_names)
    elif settings.data_source == "medmnist":
        loaded = image_loaders.load_medmnist_npz(settings.data_path, "train", settings.image_size)
    else:
        loaded = image_loaders.load_dicom_class_folders(settings.data_path, settings.image_size,
                                                        settings.class_names)
    for skipped in loaded.skipped:
        log.warning("skipped %s: %s", skipped.path, skipped.reason)
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
    return loaded.images, loaded.labels
