"""Image preprocessing and training augmentation for radiographs.

Resizing and normalisation to [0, 1], an optional 3x3 median filter (denoising)
and histogram equalisation (contrast), and augmentation for training: small
rotations, shifts, zoom and brightness/contrast jitter. No flips: a chest X-ray's
left and right are not interchangeable (the heart's side).
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from services.hospital_node.data.image_loaders import FloatArray, _resize_batch

# Small geometric jitter only: a chest film is not mirror-symmetric (the heart
# is on the patient's left), so flips would teach the model dextrocardia.
MAX_ROTATION_DEGREES: Final[float] = 7.0
MAX_SHIFT_FRACTION: Final[float] = 0.05
MAX_SCALE_CHANGE: Final[float] = 0.05
MAX_BRIGHTNESS_SHIFT: Final[float] = 0.08
MAX_CONTRAST_CHANGE: Final[float] = 0.15

def preprocess(
    images: npt.ArrayLike, image_size: int, denoise: bool = False, enhance_contrast: bool = False
) -> FloatArray:
    """Resize ``(n, 1, H, W)`` images to ``image_size``, then optionally denoise and equalize.

    ``denoise``: 3x3 median filter (edges replicated) against salt-and-pepper
    and detector noise. ``enhance_contrast``: per-image histogram equalization
    with 256 grey levels.
    """
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim != 4 or batch.shape[1] != 1:
        raise ValueError(f"images must be (n, 1, H, W), got {batch.shape}")
    resized = _resize_batch(batch, image_size)
    if denoise:
        resized = median_filter_3x3(resized)
    if enhance_contrast:
        resized = equalize_histogram(resized)
    return resized


def median_filter_3x3(images: FloatArray) -> FloatArray:
    """3x3 median of each pixel's neighbourhood, for ``(n, 1, H, W)`` images."""
    tensor = F.pad(torch.from_numpy(np.ascontiguousarray(images)), (1, 1, 1, 1), mode="replicate")
    windows = tensor.unfold(2, 3, 1).unfold(3, 3, 1)  # (n, 1, H, W, 3, 3)
    median = windows.reshape(*windows.shape[:4], 9).median(dim=-1).values
    return median.numpy().astype(np.float32)


def equalize_histogram(images: FloatArray, levels: int = 256) -> FloatArray:
    """Per-image histogram equalization; a constant image is returned unchanged."""
    count = images.shape[0]
    quantized = np.clip(np.rint(images.reshape(count, -1) * (levels - 1)), 0, levels - 1).astype(np.int64)
    offsets = (np.arange(count) * levels)[:, None]
    histograms = np.bincount((quantized + offsets).ravel(), minlength=count * levels).reshape(count, levels)
    cdf = np.cumsum(histograms, axis=1) / quantized.shape[1]
    lowest = np.take_along_axis(cdf, quantized.min(axis=1, keepdims=True), axis=1)
    spread = 1.0 - lowest
    safe_spread = np.where(spread > 0, spread, 1.0)
    equalized = (np.take_along_axis(cdf, quantized, axis=1) - lowest) / safe_spread
    unchanged = images.reshape(count, -1)
    result = np.where(spread > 0, equalized, unchanged)
    return result.reshape(images.shape).astype(np.float32)


def augment_batch(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random small rotation, shift, zoom, brightness and contrast; never a flip.

    ``images`` is ``(B, 1, H, W)`` in [0, 1]; the result has the same shape and
    range. All randomness comes from ``generator``, so runs are reproducible.
    """
    batch = images.shape[0]

    def symmetric(limit: float) -> torch.Tensor:
        draw = torch.rand(batch, generator=generator, device=generator.device)
        return ((draw * 2.0 - 1.0) * limit).to(device=images.device, dtype=images.dtype)

    angle = symmetric(math.radians(MAX_ROTATION_DEGREES))
    scale = 1.0 + symmetric(MAX_SCALE_CHANGE)
    # affine_grid works in [-1, 1] coordinates: a full image side spans 2.
    shift_x = symmetric(2.0 * MAX_SHIFT_FRACTION)
    shift_y = symmetric(2.0 * MAX_SHIFT_FRACTION)
    theta = torch.stack([
        torch.stack([scale * torch.cos(angle), -scale * torch.sin(angle), shift_x], dim=1),
        torch.stack([scale * torch.sin(angle), scale * torch.cos(angle), shift_y], dim=1),
    ], dim=1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    moved = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    contrast = (1.0 + symmetric(MAX_CONTRAST_CHANGE)).view(-1, 1, 1, 1)
    brightness = symmetric(MAX_BRIGHTNESS_SHIFT).view(-1, 1, 1, 1)
    mean = moved.mean(dim=(1, 2, 3), keepdim=True)
    return ((moved - mean) * contrast + mean + brightness).clamp(0.0, 1.0)
