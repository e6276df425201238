"""Deterministic SYNTHETIC chest radiographs for tests, demos and simulations.

Nothing here is patient data and nothing here is clinically realistic: the
images are cartoons of a frontal (PA) chest film, made of a soft-tissue
thorax, two darker lungs, curved ribs, a spine/mediastinum band and a heart
shadow. They exist so that the federated pipeline can be exercised end to end
without real data ever being present.

Classes:

* ``NORMAL``  - lungs with faint vascular texture only.
* ``OPACITY`` - one to three localized, blurry, brighter blobs inside a lung
  (a cartoon of a focal consolidation), some of them low-contrast.
* ``DIFFUSE`` - (three-class mode only) patchy bilateral increase in density.

Patient variation (body and lung size/position, rib spacing, tissue density)
and acquisition variation (blur, gain, offset, gamma, Gaussian noise) overlap
with the weak end of the findings on purpose, so that a small CNN reaches a
high but not perfect accuracy.

Everything is vectorized over the batch: per-image parameters are drawn as
``(count, 1, 1)`` arrays and broadcast against one shared coordinate grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
LabelArray = npt.NDArray[np.int64]
# Working arrays are float32 at run time; numpy's stubs widen scalar arithmetic
# to float64, so internal helpers are typed with any float precision.
_Field = npt.NDArray[np.floating[Any]]

BINARY_CLASS_NAMES: Final[tuple[str, ...]] = ("NORMAL", "OPACITY")
THREE_CLASS_NAMES: Final[tuple[str, ...]] = ("NORMAL", "OPACITY", "DIFFUSE")

NORMAL: Final[int] = 0
OPACITY: Final[int] = 1
DIFFUSE: Final[int] = 2

MIN_IMAGE_SIZE: Final[int] = 16  # below this the lungs and ribs are no longer drawn apart
MAX_BLOBS_PER_IMAGE: Final[int] = 3


def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """Class names, indexed by label, for the supported class counts (2 or 3)."""
    if num_classes == 2:
        return BINARY_CLASS_NAMES
    if num_classes == 3:
        return THREE_CLASS_NAMES
    raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")


MAX_IMAGES_PER_PATIENT: Final[int] = 4


def synthetic_patients(labels: npt.ArrayLike, seed: int) -> LabelArray:
    """A SYNTHETIC patient for each image: images of one class grouped into patients of 1 to
    ``MAX_IMAGES_PER_PATIENT`` images (uniform), numbered from 0. The pixels are not changed: the
    images of one synthetic patient share its label, not its anatomy. What the grouping gives is
    the privacy unit real sets have (CheXpert averages about 3 images a patient), so that
    record-level DP protects patients, not images."""
    values = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng([seed, 0x9A71E])
    patients = np.empty(values.size, dtype=np.int64)
    next_id = 0
    for label in np.unique(values):
        members = rng.permutation(np.flatnonzero(values == label))
        start = 0
        while start < members.size:
            size = int(rng.integers(1, MAX_IMAGES_PER_PATIENT + 1))
            patients[members[start : start + size]] = next_id
            next_id, start = next_id + 1, start + size
    return patients


def generate_synthetic_xrays(
    count: int, image_size: int, num_classes: int = 2, seed: int = 0
) -> tuple[FloatArray, LabelArray]:
    """Return ``(images, labels)`` of SYNTHETIC chest radiographs.

    ``images`` is float32 of shape ``(count, 1, image_size, image_size)`` with
    values in ``[0, 1]``; ``labels`` is int64 of shape ``(count,)`` indexing
    :func:`synthetic_class_names`. Classes are balanced to within one image
    and shuffled. The same arguments always give identical arrays.
    """
    synthetic_class_names(num_classes)  # validates num_classes
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")

    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count, dtype=np.int64) % num_classes)
    vertical, horizontal = _coordinate_grid(image_size)

    thorax = _draw_thorax(rng, count, vertical, horizontal)
    # A new array: the in-place additions below must not write into thorax.density.
    image: _Field = thorax.density + _vascular_texture(rng, count, image_size) * thorax.lungs
    # Findings are drawn only for the images that carry them: they are the costly part.
    opacity_rows = np.flatnonzero(labels == OPACITY)
    image[opacity_rows] += _focal_opacities(rng, thorax, opacity_rows, vertical=vertical, horizontal=horizontal)
    diffuse_rows = np.flatnonzero(labels == DIFFUSE)
    image[diffuse_rows] += _diffuse_density(rng, diffuse_rows.size, image_size) * thorax.lungs[diffuse_rows]
    acquired = _acquire(rng, image, image_size)
    return acquired[:, None, :, :].astype(np.float32), labels


@dataclass(frozen=True)
class _Thorax:
    """Per-image anatomy that the findings are placed into."""

    density: _Field
    lungs: _Field  # soft mask in [0, 1]
    lung_centres: _Field  # (count, side, [vertical, horizontal]) in grid units
    lung_radii: _Field  # same layout as lung_centres


def _coordinate_grid(
    image_size: int,
) -> tuple[_Field, _Field]:
    """Pixel-centre coordinates in [-1, 1], shaped (1, S, 1) and (1, 1, S)."""
    axis = ((np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0).astype(np.float32)
    return axis.reshape(1, -1, 1), axis.reshape(1, 1, -1)


def _uniform(
    rng: np.random.Generator, low: float, high: float, count: int
) -> _Field:
    """One value per image, shaped to broadcast against (count, S, S)."""
    return rng.uniform(low, high, size=(count, 1, 1)).astype(np.float32)


def _normal(rng: np.random.Generator, mean: float, std: float, count: int) -> _Field:
    return rng.normal(mean, std, size=(count, 1, 1)).astype(np.float32)


def _soft_ellipse(
    vertical: _Field,
    horizontal: _Field,
    centre_v: _Field,
    *, centre_h: _Field,
    radius_v: _Field,
    radius_h: _Field,
    edge: float,
) -> _Field:
    """1 inside, 0 outside, with a logistic edge about ``edge`` wide."""
    distance = np.sqrt(
        ((vertical - centre_v) / radius_v) ** 2 + ((horizontal - centre_h) / radius_h) ** 2
    )
    # The logistic written with tanh, which cannot overflow far from the edge.
    return 0.5 - 0.5 * np.tanh((distance - 1.0) / (2.0 * edge))


def _draw_thorax(
    rng: np.random.Generator,
    count: int,
    vertical: _Field,
    horizontal: _Field,
) -> _Thorax:
    body_v = 0.08 + _normal(rng, 0.0, 0.03, count)
    body_h = _normal(rng, 0.0, 0.03, count)
    body = _soft_ellipse(
        vertical, horizontal, body_v, centre_h=body_h,
        radius_v=_uniform(rng, 0.95, 1.1, count), radius_h=_uniform(rng, 0.78, 0.92, count), edge=0.04,
    )
    density = 0.06 + _uniform(rng, 0.42, 0.58, count) * body

    lung_top_v = _uniform(rng, -0.14, -0.02, count)
    lung_radius_v = _uniform(rng, 0.5, 0.62, count)
    lung_spread = _uniform(rng, 0.32, 0.42, count)
    lungs = np.zeros_like(density)
    centres = np.empty((count, 2, 2), dtype=np.float32)
    radii = np.empty((count, 2, 2), dtype=np.float32)
    for side_index, side in enumerate((-1.0, 1.0)):
        centre_v = lung_top_v + _normal(rng, 0.0, 0.02, count)
        centre_h = body_h + side * lung_spread + _normal(rng, 0.0, 0.02, count)
        # The heart sits on the patient's left (image right), so that lung is narrower.
        radius_h = _uniform(rng, 0.23, 0.3, count) * (0.88 if side > 0 else 1.0)
        # Lungs widen towards the diaphragm: scale the width with height.
        relative_height = np.clip((vertical - centre_v) / lung_radius_v, -1.0, 1.0)
        tapered_radius_h = radius_h * (0.85 + 0.2 * relative_height)
        lungs = np.maximum(
            lungs,
            _soft_ellipse(vertical, horizontal, centre_v, centre_h=centre_h,
                          radius_v=lung_radius_v, radius_h=tapered_radius_h, edge=0.08),
        )
        centres[:, side_index, 0] = centre_v[:, 0, 0]
        centres[:, side_index, 1] = centre_h[:, 0, 0]
        radii[:, side_index, 0] = lung_radius_v[:, 0, 0]
        radii[:, side_index, 1] = radius_h[:, 0, 0]
    density = density - _uniform(rng, 0.26, 0.4, count) * lungs

    spine_width = _uniform(rng, 0.06, 0.1, count)
    spine = np.exp(-0.5 * ((horizontal - body_h) / spine_width) ** 2)
    density = density + _uniform(rng, 0.12, 0.22, count) * spine * body
    heart = _soft_ellipse(
        vertical, horizontal,
        _normal(rng, 0.4, 0.04, count), centre_h=body_h + 0.12 + _normal(rng, 0.0, 0.03, count),
        radius_v=_uniform(rng, 0.26, 0.34, count), radius_h=_uniform(rng, 0.3, 0.38, count), edge=0.12,
    )
    density = density + _uniform(rng, 0.1, 0.18, count) * heart

    # Posterior ribs: bands that curve downwards away from the spine.
    rib_curvature = _uniform(rng, 0.25, 0.45, count)
    rib_period = _uniform(rng, 0.17, 0.23, count)
    rib_phase = _uniform(rng, 0.0, 1.0, count)
    rib_coordinate = vertical - rib_curvature * (horizontal - body_h) ** 2
    ribs = (0.5 + 0.5 * np.cos(2.0 * np.pi * (rib_coordinate / rib_period + rib_phase))) ** 4
    density = density + _uniform(rng, 0.05, 0.11, count) * ribs * body * (0.35 + 0.65 * lungs)
    return _Thorax(density, lungs, centres, radii)


def _lowpass_noise(
    rng: np.random.Generator, count: int, image_size: int, correlation_pixels: float
) -> _Field:
    """Gaussian-smoothed white noise with unit std per image.

    The white noise is drawn directly in the Fourier domain (white noise is
    white there too), which saves the forward transform.
    """
    spectrum_shape = (count, image_size, image_size // 2 + 1)
    spectrum = rng.standard_normal(spectrum_shape, dtype=np.float32) + 1j * rng.standard_normal(
        spectrum_shape, dtype=np.float32
    )
    sigma = np.full((count, 1, 1), correlation_pixels, dtype=np.float32)
    smooth = np.fft.irfft2(spectrum * _gaussian_transfer(image_size, sigma), s=(image_size, image_size))
    std = smooth.std(axis=(1, 2), keepdims=True)
    normalized: _Field = (smooth / np.maximum(std, 1e-12)).astype(np.float32)
    return normalized


def _gaussian_transfer(image_size: int, sigma_pixels: _Field) -> _Field:
    """Fourier transfer function of a Gaussian blur, shaped for ``rfft2`` output."""
    frequency_v = np.fft.fftfreq(image_size).astype(np.float32).reshape(1, -1, 1)
    frequency_h = np.fft.rfftfreq(image_size).astype(np.float32).reshape(1, 1, -1)
    return np.exp(-2.0 * np.pi**2 * sigma_pixels**2 * (frequency_v**2 + frequency_h**2))


def _gaussian_blur(images: _Field, sigma_pixels: _Field) -> _Field:
    """Per-image Gaussian blur in the Fourier domain (edges wrap; they are dark)."""
    size = images.shape[-1]
    blurred = np.fft.irfft2(np.fft.rfft2(images) * _gaussian_transfer(size, sigma_pixels), s=(size, size))
    return blurred.astype(np.float32)


def _vascular_texture(
    rng: np.random.Generator, count: int, image_size: int
) -> _Field:
    amplitude = _uniform(rng, 0.01, 0.04, count)
    return amplitude * _lowpass_noise(rng, count, image_size, 0.035 * image_size)


def _focal_opacities(
    rng: np.random.Generator,
    thorax: _Thorax,
    rows: npt.NDArray[np.intp],
    *, vertical: _Field,
    horizontal: _Field,
) -> _Field:
    """Sum of 1..3 Gaussian blobs, each inside one lung, for the images ``rows``."""
    count = rows.size
    blob_shape = (count, MAX_BLOBS_PER_IMAGE)
    blobs_present = rng.integers(1, MAX_BLOBS_PER_IMAGE + 1, size=count)
    active = np.arange(MAX_BLOBS_PER_IMAGE)[None, :] < blobs_present[:, None]
    side = rng.integers(0, 2, size=blob_shape)
    # Uniform position in the inner 70% of the chosen lung's ellipse.
    radius = 0.7 * np.sqrt(rng.uniform(0.0, 1.0, blob_shape)).astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * np.pi, blob_shape).astype(np.float32)
    image_rows = rows[:, None]
    centres = thorax.lung_centres[image_rows, side]
    radii = thorax.lung_radii[image_rows, side]
    centre_v = centres[..., 0] + radius * np.sin(angle) * radii[..., 0]
    centre_h = centres[..., 1] + radius * np.cos(angle) * radii[..., 1]
    sigma = rng.uniform(0.05, 0.16, blob_shape).astype(np.float32)
    # Log-uniform contrast: many faint findings, some obvious ones.
    contrast = (np.exp(rng.uniform(np.log(0.06), np.log(0.4), blob_shape)) * active).astype(np.float32)

    blobs = contrast[..., None, None] * np.exp(
        -0.5 * (
            (vertical[:, None] - centre_v[..., None, None]) ** 2
            + (horizontal[:, None] - centre_h[..., None, None]) ** 2
        ) / sigma[..., None, None] ** 2
    )
    opacities: _Field = blobs.sum(axis=1) * (0.3 + 0.7 * thorax.lungs[rows])
    return opacities


def _diffuse_density(
    rng: np.random.Generator, count: int, image_size: int
) -> _Field:
    """Patchy haze: thresholded coarse noise plus a uniform density rise."""
    patches = np.maximum(_lowpass_noise(rng, count, image_size, 0.06 * image_size) + 0.3, 0.0)
    patch_amplitude = _uniform(rng, 0.025, 0.09, count)
    haze = _uniform(rng, 0.0, 0.06, count)
    density: _Field = patch_amplitude * patches + haze
    return density


def _acquire(
    rng: np.random.Generator, density: _Field, image_size: int
) -> _Field:
    """Detector model: blur, gain/offset, gamma, then Gaussian noise and clipping."""
    count = density.shape[0]
    blur_pixels = _uniform(rng, 0.3, 1.2, count) * image_size / 64.0
    image = _gaussian_blur(density, blur_pixels)
    image = image * _uniform(rng, 0.85, 1.15, count) + _uniform(rng, -0.05, 0.05, count)
    image = np.clip(image, 0.0, 1.0) ** _uniform(rng, 0.8, 1.25, count)
    image = image + _uniform(rng, 0.01, 0.04, count) * rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image, 0.0, 1.0)
