"""What every server strategy offers the round loop (in the spirit of Flower's `Strategy`).

A strategy says what the nodes receive each round and how the participants' decoded
mean upload becomes the next global model; it owns its state, which the run state
checkpoints. The arithmetic is in the strategy modules, never in the loop.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class TrainingStrategy(Protocol):
    @property
    def drift_correction(self) -> bool:
        """Whether nodes run SCAFFOLD's client rule (the plan tells them)."""

    def upload_dimension(self, parameter_count: int) -> int:
        """Values in one node's upload."""

    def broadcast(self, weights: np.ndarray) -> np.ndarray:
        """What the nodes receive after the plan: the global model, and whatever else the strategy sends."""

    def apply(self, weights: np.ndarray, mean_upload: np.ndarray, participants: int) -> np.ndarray:
        """The next global model from the participants' mean upload."""

    def state(self) -> dict[str, np.ndarray]:
        """Everything a restart needs, by name."""

    def load_state(self, state: dict[str, np.ndarray]) -> None: ...


class ServerStep:
    """A strategy that is a server optimizer step and nothing more: the nodes receive the model, upload their
    update, and the mean update is the step's pseudo-gradient (FedAvg, FedAvgM, FedAdam)."""

    drift_correction = False

    def upload_dimension(self, parameter_count: int) -> int:
        return parameter_count

    def broadcast(self, weights: np.ndarray) -> np.ndarray:
        return weights

    def apply(self, weights: np.ndarray, mean_upload: np.ndarray, participants: int) -> np.ndarray:
        return self.step(weights, mean_upload)

    def step(self, weights: np.ndarray, mean_update: np.ndarray) -> np.ndarray:
        raise NotImplementedError
