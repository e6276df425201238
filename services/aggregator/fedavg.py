"""FedAvg server step: McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017. The global model moves by the
participants' mean update, times a server learning rate (1 for plain FedAvg)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FedAvg:
    learning_rate: float = 1.0

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        return weights + self.learning_rate * mean_update

    def state(self) -> dict[str, np.ndarray]:
        return {}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        return None
