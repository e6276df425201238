"""One strategy per server algorithm: what each sends, how each applies the decoded mean, what it keeps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.aggregator.config import AggregatorSettings
from services.aggregator.strategies.factory import build_strategy
from services.aggregator.strategies.fedadam import FedAdam
from services.aggregator.strategies.fedavg import FedAvg
from services.aggregator.strategies.head_refit import HeadRefit, HeadRefitError
from services.aggregator.strategies.scaffold import Scaffold
from services.common.ml.head_refit import head_positions, lda_head, moments_of, statistics_vector
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model


def test_scaffold_moves_the_model_by_the_first_half_and_c_by_the_participants_share_of_the_second() -> None:
    strategy = Scaffold(FedAvg(1.0), parameter_count=3, expected_participants=5)
    weights = np.array([1.0, 2.0, 3.0])
    assert np.array_equal(strategy.broadcast(weights), [1, 2, 3, 0, 0, 0])
    assert strategy.upload_dimension(3) == 6 and strategy.drift_correction
    mean = np.array([0.1, 0.2, 0.3, 1.0, -1.0, 0.5])
    assert np.allclose(strategy.apply(weights, mean, participants=4), [1.1, 2.2, 3.3])
    assert np.allclose(strategy.control, 4 / 5 * mean[3:])
    assert np.allclose(strategy.broadcast(weights)[3:], strategy.control)


def test_head_refit_replaces_the_head_and_nothing_else_or_refuses_by_name() -> None:
    model = build_model("tiny", 2, 0)
    spec = parameter_spec(model.state_dict())
    head = head_positions(model, spec)
    refit = HeadRefit(head, shrinkage=0.1)
    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, 200))
    features = torch.from_numpy(rng.normal(size=(200, head.features)) + labels.numpy()[:, None])
    moments = moments_of(features, labels, 2)
    weights = flatten_state(model.state_dict())
    after = refit.apply(weights, statistics_vector(moments) / 4, participants=4)  # the mean of 4 hospitals
    weight, bias = lda_head(moments, 0.1)
    assert np.allclose(after[head.weight], weight.reshape(-1)) and np.allclose(after[head.bias], bias)
    body = np.ones(weights.size, dtype=bool)
    body[head.weight] = body[head.bias] = False
    assert np.array_equal(after[body], weights[body])
    one_class = moments_of(features, torch.zeros(200, dtype=torch.int64), 2)
    with pytest.raises(HeadRefitError, match="no head refit"):
        refit.apply(weights, statistics_vector(one_class), participants=1)


@pytest.mark.parametrize(("settings", "kind", "server"), [
    ({}, FedAvg, FedAvg),
    ({"server_optimizer": "fedadam"}, FedAdam, FedAdam),
    ({"drift_correction": True}, Scaffold, FedAvg),
    ({"drift_correction": True, "server_optimizer": "fedadam"}, Scaffold, FedAdam),
])
def test_the_factory_builds_the_configured_strategy(settings: dict[str, object], kind: type, server: type) -> None:
    strategy = build_strategy(AggregatorSettings(insecure=True, server_momentum=0.5, **settings), 10)
    assert isinstance(strategy, kind)
    assert isinstance(strategy._server if isinstance(strategy, Scaffold) else strategy, server)  # type: ignore[attr-defined]
    if isinstance(strategy, FedAvg):
        assert strategy.momentum == 0.5


def test_a_partial_round_moves_only_the_trained_positions_and_keeps_momentum_there() -> None:
    positions = np.array([2, 5, 6])
    strategy = build_strategy(AggregatorSettings(insecure=True, server_momentum=0.5, trainable="head"), 10, positions)
    assert strategy.upload_dimension(10) == 3
    weights = np.arange(10, dtype=np.float64)
    first = strategy.apply(weights, np.array([1.0, 2.0, 3.0]), 5)
    np.testing.assert_array_equal(np.delete(first, positions), np.delete(weights, positions))
    np.testing.assert_allclose(first[positions], weights[positions] + [1.0, 2.0, 3.0])
    second = strategy.apply(first, np.array([1.0, 0.0, 0.0]), 5)  # velocity 0.5 x (1, 2, 3) + (1, 0, 0)
    np.testing.assert_allclose(second[positions] - first[positions], [1.5, 1.0, 1.5])
    np.testing.assert_array_equal(np.delete(second, positions), np.delete(weights, positions))
    with pytest.raises(ValueError, match="3 trained ones"):
        strategy.apply(second, np.zeros(10), 5)


def test_partial_rounds_refuse_scaffold() -> None:
    with pytest.raises(ValueError, match="SCAFFOLD"):
        AggregatorSettings(insecure=True, trainable="head", drift_correction=True)
