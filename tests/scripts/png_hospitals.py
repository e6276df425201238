"""Generated PNG folders in the Kaggle layout, for the own-images tests: SYNTHETIC pictures, not radiographs.

NORMAL images are smooth noise; PNEUMONIA images add one bright blob (an "opacity") at a random
place in the middle of the picture. The signal is plain on purpose: these folders test the
own-images path and that its recipe learns, not how well a model reads chest X-rays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 32


def picture(rng: np.random.Generator, opacity: bool) -> np.ndarray:
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    base = 0.35 + 0.1 * np.sin(3 * x + rng.uniform(0, 6)) + 0.05 * rng.standard_normal((SIZE, SIZE))
    if opacity:
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.25, 0.75), rng.uniform(0.08, 0.14)
        base = base + 0.45 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    return (np.clip(base, 0, 1) * 255).astype(np.uint8)


def write_hospital(root: Path, seed: int, train: int = 60, val: int = 20,
                   folders: tuple[str, str] = ("NORMAL", "PNEUMONIA")) -> Path:
    """`root/{train,val}/{folders}/*.png`, half of each split per class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        for index in range(count):
            label = index % 2
            path = root / split / folders[label] / f"{split}-{index:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(picture(rng, bool(label))).save(path)
    return root
