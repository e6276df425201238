"""FedAdam server optimizer: Reddi et al., "Adaptive Federated Optimization",
ICLR 2021, Algorithm 2. The mean client update is treated as a pseudo-gradient:

    m = b1 m + (1 - b1) delta;  v = b2 v + (1 - b2) delta^2;  w = w + lr m / (sqrt(v) + tau)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.aggregator.strategies.strategy import ServerStep


@dataclass
class FedAdam(ServerStep):
    learning_rate: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    _m: np.ndarray | None = field(default=None, repr=False)
    _v: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        if self._m is None or self._v is None:
            self._m = np.zeros_like(weights)
            # Reddi et al. initialise v to tau^2.
            self._v = np.full_like(weights, self.tau**2)
        self._m = self.beta1 * self._m + (1 - self.beta1) * mean_update
        self._v = self.beta2 * self._v + (1 - self.beta2) * mean_update**2
        return weights + self.learning_rate * self._m / (np.sqrt(self._v) + self.tau)

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._m is None or self._v is None else {"m": self._m, "v": self._v}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._m, self._v = state.get("m"), state.get("v")
