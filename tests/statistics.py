"""Statistical checks the privacy tests share: is a sample uniform over a field?"""

from __future__ import annotations

import numpy as np


def chi_square_uniform(values: np.ndarray, categories: int) -> float:
    """Pearson's statistic of `values` against the uniform distribution over `categories`."""
    observed = np.bincount(values, minlength=categories)
    expected = values.size / categories
    return float(np.sum((observed - expected) ** 2) / expected)


def chi_square_critical(categories: int, z: float) -> float:
    """The chi-square quantile with categories - 1 degrees of freedom at the normal quantile z (Wilson and
    Hilferty, 1931: accurate to a fraction of a percent at these sizes)."""
    df = categories - 1
    return df * (1 - 2 / (9 * df) + z * np.sqrt(2 / (9 * df))) ** 3
