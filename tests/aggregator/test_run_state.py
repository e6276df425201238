"""The run state: everything a restart needs, checkpointed and restored, and round ids that only grow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.aggregator.privacy_accountant import SkellamAccountant, round_privacy
from services.aggregator.run_state import RunState
from services.aggregator.strategies.fedavg import FedAvg
from services.aggregator.strategies.scaffold import Scaffold
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.update_codec import plan_quantization


def _run(weights: np.ndarray) -> RunState:
    return RunState(weights, Scaffold(FedAvg(1.0, momentum=0.5), weights.size, 5), SkellamAccountant(1e-5))


def test_a_checkpoint_restores_model_strategy_accountant_and_counters(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    run = _run(rng.normal(size=50).astype(np.float32).astype(np.float64))
    plan = plan_quantization(50, 5.0, 24, max_participants=8, min_participants=3, noise_kind=NoiseKind.SKELLAM,
                             noise_variance=1e6)
    for _ in range(2):
        run.next_round(tmp_path)
        run.weights = run.strategy.apply(run.weights, rng.normal(size=100), 4)
        run.accountant.step(round_privacy(plan, 4))
        run.completed_rounds += 1
    run.weights = run.weights.astype(np.float32).astype(np.float64)  # checkpoints keep float32 weights
    run.checkpoint(tmp_path)
    restored = RunState.restore(tmp_path, Scaffold(FedAvg(1.0, momentum=0.5), 50, 5), 1e-5)
    assert restored is not None
    assert (restored.round_id, restored.completed_rounds) == (2, 2)
    assert np.array_equal(restored.weights, run.weights)
    assert restored.accountant.epsilon() == run.accountant.epsilon() > 0
    # The restored strategy takes the next step exactly as the original would: momentum and control variate.
    step = rng.normal(size=100)
    assert np.array_equal(restored.strategy.apply(restored.weights, step, 4), run.strategy.apply(run.weights, step, 4))
    assert np.array_equal(restored.strategy.state()["control"], run.strategy.state()["control"])


def test_without_a_checkpoint_there_is_nothing_to_restore(tmp_path: Path) -> None:
    assert RunState.restore(tmp_path, FedAvg(), 1e-5) is None


def test_round_ids_only_grow(tmp_path: Path) -> None:
    run = _run(np.zeros(3))
    assert [run.next_round(tmp_path) for _ in range(3)] == [1, 2, 3]


def test_a_round_opened_after_the_checkpoint_is_abandoned_and_its_id_never_reused(tmp_path: Path) -> None:
    run = _run(np.zeros(3))
    run.next_round(tmp_path)
    run.train_rounds, run.completed_rounds, run.pending_row = 1, 1, {"round": 1, "participants": 3}
    run.checkpoint(tmp_path)
    run.next_round(tmp_path)  # round 2 opens, then the aggregator dies (kill -9: nothing else is written)
    restored = RunState.restore(tmp_path, Scaffold(FedAvg(1.0, momentum=0.5), 3, 5), 1e-5)
    assert restored is not None
    assert (restored.round_id, restored.interrupted_round, restored.train_rounds) == (2, 2, 1)
    assert restored.pending_row == {"round": 1, "participants": 3}
    assert restored.next_round(tmp_path) == 3


def test_a_sum_charged_after_the_checkpoint_stays_charged_after_a_restart(tmp_path: Path) -> None:
    run = _run(np.zeros(50))
    run.checkpoint(tmp_path)
    run.next_round(tmp_path)
    plan = plan_quantization(50, 5.0, 24, max_participants=8, min_participants=3, noise_kind=NoiseKind.SKELLAM,
                             noise_variance=1e6)
    run.accountant.step(round_privacy(plan, 3))
    run.save_accountant(tmp_path)  # charged before decryption; the aggregator dies before its checkpoint
    restored = RunState.restore(tmp_path, Scaffold(FedAvg(1.0, momentum=0.5), 50, 5), 1e-5)
    assert restored is not None
    assert restored.accountant.rounds == 1
    assert restored.accountant.epsilon() == run.accountant.epsilon() > 0


def test_only_the_initial_model_and_the_newest_checkpoints_are_kept_and_the_newest_restores(tmp_path: Path) -> None:
    run = _run(np.zeros(50))
    run.keep_checkpoints = 2
    run.checkpoint(tmp_path)  # round 0: the initial model
    for round_id in range(1, 6):
        run.next_round(tmp_path)
        run.weights = np.full(50, float(round_id))
        run.completed_rounds = round_id
        run.checkpoint(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("round_*.npz")) == ["round_0000.npz", "round_0004.npz",
                                                                     "round_0005.npz"]
    restored = RunState.restore(tmp_path, Scaffold(FedAvg(1.0, momentum=0.5), 50, 5), 1e-5)
    assert restored is not None and restored.completed_rounds == 5 and np.all(restored.weights == 5.0)
    every = _run(np.zeros(50))  # 0: every round's file stays
    for round_id in range(3):
        every.round_id = round_id
        every.checkpoint(tmp_path / "all")
    assert len(list((tmp_path / "all").glob("round_*.npz"))) == 3
