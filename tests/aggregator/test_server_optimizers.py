import numpy as np
import pytest

from services.aggregator.strategies.fedadam import FedAdam
from services.aggregator.strategies.fedavg import FedAvg


def test_fedavg_moves_weights_by_server_lr_times_mean_update() -> None:
    weights, update = np.array([1.0, -2.0]), np.array([0.5, 0.25])
    assert np.allclose(FedAvg(1.0).step(weights, update), [1.5, -1.75])
    assert np.allclose(FedAvg(0.5).step(weights, update), [1.25, -1.875])


def test_fedadam_first_step_matches_reddi_et_al_by_hand() -> None:
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    delta = np.array([0.2, -0.4])
    out = FedAdam(lr, b1, b2, tau).step(np.zeros(2), delta)
    m = (1 - b1) * delta                       # 0.02, -0.04
    v = b2 * tau**2 + (1 - b2) * delta**2      # v starts at tau^2
    assert np.allclose(out, lr * m / (np.sqrt(v) + tau))


def test_fedadam_keeps_moments_across_rounds_and_restores_them() -> None:
    optimizer = FedAdam(0.1)
    weights = optimizer.step(np.zeros(3), np.ones(3))
    state = optimizer.state()
    second = optimizer.step(weights, np.ones(3))
    restored = FedAdam(0.1)
    restored.load_state(state)
    assert np.allclose(restored.step(weights, np.ones(3)), second)
    with pytest.raises(AssertionError):
        assert np.allclose(FedAdam(0.1).step(weights, np.ones(3)), second)


def test_fedavgm_accumulates_velocity_as_hsu_et_al() -> None:
    optimizer = FedAvg(0.5, momentum=0.9)
    update = np.array([1.0, -2.0])
    first = optimizer.step(np.zeros(2), update)
    second = optimizer.step(first, update)
    assert np.allclose(first, 0.5 * update)
    assert np.allclose(second - first, 0.5 * (0.9 * update + update))


def test_fedavgm_velocity_survives_a_checkpoint() -> None:
    optimizer = FedAvg(1.0, momentum=0.5)
    weights = optimizer.step(np.zeros(2), np.ones(2))
    restored = FedAvg(1.0, momentum=0.5)
    restored.load_state(optimizer.state())
    assert np.allclose(restored.step(weights, np.ones(2)), optimizer.step(weights, np.ones(2)))
