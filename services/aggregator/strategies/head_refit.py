"""The closing head refit: linear discriminant analysis on the hospitals' summed feature
statistics (classifier calibration from feature statistics: Luo et al., "No Fear of
Heterogeneity", NeurIPS 2021; the statistics and the fit are in `services/common/ml/head_refit.py`).

The nodes receive the trained model and upload, instead of an update, their feature
statistics scaled to the clip norm, in the statistics layout. The decoded sum (the
participants' mean times their number) gives the pooled moments; the fitted head
replaces the model's classifier head and nothing else.
"""

from __future__ import annotations

import numpy as np

from services.common.ml.head_refit import HeadPositions, lda_head, moments_from_statistics, statistics_dimension


class HeadRefitError(ValueError):
    """The pooled statistics admit no head (a class absent everywhere, say); the model stays as it was."""


class HeadRefit:
    def __init__(self, head: HeadPositions, shrinkage: float) -> None:
        self._head = head
        self._shrinkage = shrinkage

    @property
    def upload_dimension(self) -> int:
        return statistics_dimension(self._head.num_classes, self._head.features)

    def apply(self, weights: np.ndarray, mean_statistics: np.ndarray, participants: int) -> np.ndarray:
        head = self._head
        moments = moments_from_statistics(mean_statistics * participants, head.num_classes, head.features)
        try:
            weight, bias = lda_head(moments, self._shrinkage)
        except (ValueError, np.linalg.LinAlgError) as error:
            raise HeadRefitError(f"no head refit: {error}") from error
        return head.install(weights, weight, bias)
