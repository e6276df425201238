"""The one place that builds the server strategy from the aggregator's settings."""

from __future__ import annotations

import logging

import numpy as np

from services.aggregator.config import AggregatorSettings
from services.aggregator.strategies.fedadam import FedAdam
from services.aggregator.strategies.fedavg import FedAvg
from services.aggregator.strategies.partial import PartialUpdate
from services.aggregator.strategies.scaffold import Scaffold
from services.aggregator.strategies.strategy import TrainingStrategy

log = logging.getLogger(__name__)


def build_strategy(settings: AggregatorSettings, parameter_count: int,
                   positions: np.ndarray | None = None) -> TrainingStrategy:
    """`positions`: where the trained parameters lie when a round trains part of the model (`trainable`)."""
    server: TrainingStrategy
    if settings.server_optimizer == "fedadam":
        server = FedAdam(settings.server_learning_rate, settings.fedadam_beta1, settings.fedadam_beta2,
                         settings.fedadam_tau)
    else:
        server = FedAvg(settings.server_learning_rate, settings.server_momentum)
    if settings.drift_correction:
        if settings.local_optimizer == "adamw":
            log.warning("drift correction with local AdamW did worse than plain FedAvg in the measured runs: AdamW "
                        "turns the steady correction into full-size steps (docs/RESULTS.md, 'Drift correction')")
        return Scaffold(server, parameter_count, settings.expected_participants)
    if settings.trainable != "all":
        assert positions is not None, "a partial round needs the trained positions"
        return PartialUpdate(server, positions, parameter_count)
    return server
