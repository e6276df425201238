"""FedAvg server step: McMahan et al., "Communication-Efficient Learning of Deep
Networks from Decentralized Data", AISTATS 2017. The global model moves by the
participants' mean update, times a server learning rate (1 for plain FedAvg).

With momentum > 0 this is FedAvgM (Hsu, Qi & Brown, "Measuring the Effects of
Non-Identical Data Distribution for Federated Visual Classification", 2019):

    v = momentum v + delta;  w = w + lr v

which damps the round-to-round swings that label skew causes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from services.aggregator.strategies.strategy import ServerStep


@dataclass
class FedAvg(ServerStep):
    learning_rate: float = 1.0
    momentum: float = 0.0
    _velocity: np.ndarray | None = field(default=None, repr=False)

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        if self.momentum == 0.0:
            return weights + self.learning_rate * mean_update
        self._velocity = mean_update if self._velocity is None else self.momentum * self._velocity + mean_update
        return weights + self.learning_rate * self._velocity

    def state(self) -> dict[str, np.ndarray]:
        return {} if self._velocity is None else {"velocity": self._velocity}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._velocity = state.get("velocity")
