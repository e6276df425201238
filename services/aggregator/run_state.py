"""Everything a restart of the aggregator needs, in one object that checkpoints and loads.

The global model, the strategy's state (momentum, Adam moments, SCAFFOLD's control
variate), the privacy accountant's totals and the round counters. Round ids only grow:
a round that was opened is never opened again, so the key authority never sees one
round id twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from services.aggregator.checkpoint import load_latest_checkpoint, save_checkpoint
from services.aggregator.privacy_accountant import SkellamAccountant
from services.aggregator.strategies.strategy import TrainingStrategy


@dataclass
class RunState:
    weights: np.ndarray
    strategy: TrainingStrategy
    accountant: SkellamAccountant
    round_id: int = 0  # the last round opened
    completed_rounds: int = 0
    record_epsilon: dict[str, float] = field(default_factory=dict)  # by hospital, the last it reported

    def next_round(self) -> int:
        self.round_id += 1
        return self.round_id

    def checkpoint(self, directory: Path) -> Path:
        """Save the state as of `round_id` (0: the initial model)."""
        a = self.accountant
        return save_checkpoint(directory, self.round_id, self.weights, self.strategy.state(), {
            "completed_rounds": self.completed_rounds, "epsilon": a.epsilon(), "rdp": a.rdp,
            "accountant_rounds": a.rounds, "unaccounted_rounds": a.unaccounted_rounds,
            "record_epsilon": self.record_epsilon})

    @classmethod
    def restore(cls, directory: Path, strategy: TrainingStrategy, delta: float) -> RunState | None:
        """The state of the newest checkpoint, its strategy state loaded into `strategy`; None without one."""
        saved = load_latest_checkpoint(directory)
        if saved is None:
            return None
        strategy.load_state(saved.strategy_state)
        s = saved.scalars
        accountant = SkellamAccountant(delta, [float(r) for r in s["rdp"]], int(s["accountant_rounds"]),
                                       int(s["unaccounted_rounds"]))
        return cls(saved.weights, strategy, accountant, saved.round_id, int(s["completed_rounds"]),
                   {str(k): float(v) for k, v in s.get("record_epsilon", {}).items()})
