"""Evaluation counts for tests that need consistent ones: every image's score in one histogram bin."""

from __future__ import annotations

import numpy as np

BIN = 50


def histograms_for(confusion: np.ndarray, bins: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The positive and negative one-vs-rest histograms of a confusion matrix's images, all in bin `BIN`: each class's
    positives are its images, its negatives every other image, as a real evaluation counts them."""
    confusion = np.asarray(confusion, dtype=np.int64)
    per_class = confusion.sum(axis=1)
    positive = np.zeros((confusion.shape[0], bins), dtype=np.int64)
    negative = np.zeros_like(positive)
    positive[:, BIN] = per_class
    negative[:, BIN] = per_class.sum() - per_class
    return positive, negative
