"""SCAFFOLD's server rule: Karimireddy et al., "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020, Algorithm 1 (option I control variates).

The nodes receive the global model and the consortium's control variate c; each
upload carries the node's model update and then its control variate's change, so the
decoded mean upload holds both halves. The model half goes to the wrapped server
strategy (FedAvg, FedAvgM or FedAdam); c moves by the participants' share of the mean
control variate change:

    c = c + |S| / N * mean_{i in S} (c_i' - c_i)

The client rule (c_i and the corrected local steps) is the hospital node's
(`services/hospital_node/local_round.py`).
"""

from __future__ import annotations

import numpy as np

from services.aggregator.strategies.strategy import TrainingStrategy


class Scaffold:
    drift_correction = True

    def __init__(self, server: TrainingStrategy, parameter_count: int, expected_participants: int) -> None:
        self._server = server
        self._count = parameter_count
        self._expected = expected_participants
        self.control = np.zeros(parameter_count)

    def upload_dimension(self, parameter_count: int) -> int:
        return 2 * parameter_count

    def broadcast(self, weights: np.ndarray) -> np.ndarray:
        return np.concatenate([weights, self.control])

    def apply(self, weights: np.ndarray, mean_upload: np.ndarray, participants: int) -> np.ndarray:
        updated = self._server.apply(weights, mean_upload[: self._count], participants)
        self.control += participants / self._expected * mean_upload[self._count :]
        return updated

    def state(self) -> dict[str, np.ndarray]:
        return {**self._server.state(), "control": self.control}

    def load_state(self, state: dict[str, np.ndarray]) -> None:
        self._server.load_state({name: value for name, value in state.items() if name != "control"})
        if "control" in state:
            self.control = np.array(state["control"], dtype=np.float64)
