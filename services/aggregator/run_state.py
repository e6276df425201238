"""Everything a restart of the aggregator needs, in one object that checkpoints and loads.

The global model, the strategy's state (momentum, Adam moments, SCAFFOLD's control
variate), the privacy accountant's totals, the round counters, and the row of the
last applied round (written once its model's evaluations arrive with the next round).
Round ids only grow, across restarts too: each round id is on disk (`opened.json`,
fsynced) before its plan leaves, and a restarted aggregator continues after the
largest id ever opened. A round interrupted by a crash is abandoned, never reopened,
so the key authority never sees one round id twice. A run that ended (closing evaluation
written) is recorded as finished before the aggregator says so: a restart after the end
serves status and metrics, abandons nothing and waits for no node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.aggregator.checkpoint import load_latest_checkpoint, save_checkpoint
from services.aggregator.privacy_accountant import SkellamAccountant
from services.aggregator.strategies.strategy import TrainingStrategy
from services.common.runtime.atomic_files import read_json, write_json_atomic

OPENED = "opened.json"
ACCOUNTANT = "accountant.json"


@dataclass
class RunState:
    weights: np.ndarray
    strategy: TrainingStrategy
    accountant: SkellamAccountant
    round_id: int = 0  # the last round opened
    completed_rounds: int = 0
    record_epsilon: dict[str, float] = field(default_factory=dict)  # by hospital, the last it reported
    train_rounds: int = 0  # training rounds run to their end (applied or failed); an interrupted one is not counted
    head_refit_done: bool = False
    pending_row: dict[str, Any] | None = None  # the last finished round's row, waiting for its model's evaluations
    interrupted_round: int | None = None  # a round a restart abandoned (set on restore only)
    finished: bool = False  # the run ended, its closing evaluation written: a restart only serves status
    keep_checkpoints: int = 0  # round files kept besides round 0's (0: all); a setting, not saved

    def finish(self, directory: Path) -> None:
        """Record that the run is complete, closing evaluation included, before anyone is told so."""
        self.finished = True
        self.checkpoint(directory)

    def next_round(self, directory: Path) -> int:
        """A new round id, on disk before anyone hears of it."""
        self.round_id += 1
        write_json_atomic(directory / OPENED, {"round": self.round_id})
        return self.round_id

    def save_accountant(self, directory: Path) -> None:
        """The accountant's totals alone, on disk: written when a sum is charged, before it is decrypted."""
        a = self.accountant
        write_json_atomic(directory / ACCOUNTANT, {"rdp": a.rdp, "rounds": a.rounds,
                                                   "unaccounted_rounds": a.unaccounted_rounds})

    def checkpoint(self, directory: Path) -> Path:
        """Save the state as of `round_id` (0: the initial model)."""
        a = self.accountant
        return save_checkpoint(directory, self.round_id, self.weights, optimizer_state=self.strategy.state(),
                               keep=self.keep_checkpoints, round_state={
            "completed_rounds": self.completed_rounds, "epsilon": a.epsilon(), "rdp": a.rdp,
            "accountant_rounds": a.rounds, "unaccounted_rounds": a.unaccounted_rounds,
            "record_epsilon": self.record_epsilon, "train_rounds": self.train_rounds,
            "head_refit_done": self.head_refit_done, "pending_row": self.pending_row, "finished": self.finished})

    @classmethod
    def restore(cls, directory: Path, strategy: TrainingStrategy, delta: float) -> RunState | None:
        """The state of the newest checkpoint, its strategy state loaded into `strategy`; None without one. A round
        opened after that checkpoint was interrupted: it is abandoned and counts as opened."""
        saved = load_latest_checkpoint(directory)
        if saved is None:
            return None
        strategy.load_state(saved.strategy_state)
        s = saved.scalars
        charged = read_json(directory / ACCOUNTANT)
        if isinstance(charged, dict) and int(charged["rounds"]) > int(s["accountant_rounds"]):
            # A sum was charged after the checkpoint (and perhaps decrypted): the charge stands.
            s = {**s, "rdp": charged["rdp"], "accountant_rounds": charged["rounds"],
                 "unaccounted_rounds": charged["unaccounted_rounds"]}
        accountant = SkellamAccountant(delta, [float(r) for r in s["rdp"]], int(s["accountant_rounds"]),
                                       int(s["unaccounted_rounds"]))
        opened = read_json(directory / OPENED) or {}
        last_opened = max(saved.round_id, int(opened.get("round", 0)))
        pending = s.get("pending_row")
        return cls(saved.weights, strategy, accountant, last_opened, int(s["completed_rounds"]),
                   {str(k): float(v) for k, v in s.get("record_epsilon", {}).items()},
                   int(s.get("train_rounds", 0)), bool(s.get("head_refit_done", False)),
                   dict(pending) if isinstance(pending, dict) else None,
                   last_opened if last_opened > saved.round_id else None, bool(s.get("finished", False)))
