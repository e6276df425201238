"""Rounds that train part of the model (`trainable` head or last_block): only that part travels.

Nodes upload their update at the trained positions of the flat weight vector
(`services/common/ml/trainable.py`); the wrapped server step sees the mean update put back at
those positions, zero elsewhere, so every other weight stays exactly as it was (FedAvgM's
velocity and FedAdam's moments stay zero there too).
"""

from __future__ import annotations

import numpy as np

from services.aggregator.strategies.strategy import TrainingStrategy
from services.common.ml.trainable import scatter


class PartialUpdate:
    drift_correction = False

    def __init__(self, server: TrainingStrategy, positions: np.ndarray, parameter_count: int) -> None:
        self._server = server
        self._positions = positions
        self._count = parameter_count

    def upload_dimension(self, parameter_count: int) -> int:
        return int(self._positions.size)

    def broadcast(self, weights: np.ndarray) -> np.ndarray:
        return self._server.broadcast(weights)

    def apply(self, weights: np.ndarray, mean_upload: np.ndarray, participants: int) -> np.ndarray:
        if mean_upload.size != self._positions.size:
            raise ValueError(f"a mean upload of {mean_upload.size} values for {self._positions.size} trained ones")
        return self._server.apply(weights, scatter(mean_upload, self._positions, self._count), participants)

    def state(self) -> dict[str, np.ndarray]:
        return self._server.state()

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._server.load_state(state)
