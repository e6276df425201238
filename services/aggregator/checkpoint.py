"""Atomic per-round checkpoints: the global model, the strategy's state and the run's counters.

`round_<r>.npz` holds `weights` and the strategy's arrays (`opt_<name>`); `latest.json`
points at the newest file and carries the scalars. Each file is replaced whole, and
`latest.json` is written last, so it never names a file that is not complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.common.runtime.atomic_files import atomic_writer, read_json, write_atomic

LATEST = "latest.json"


@dataclass(frozen=True)
class Checkpoint:
    round_id: int
    weights: np.ndarray
    strategy_state: dict[str, np.ndarray]
    scalars: dict[str, Any]


def save_checkpoint(directory: Path, round_id: int, weights: np.ndarray, *, optimizer_state: dict[str, np.ndarray],
                    round_state: dict[str, Any], keep: int = 0) -> Path:
    """Write `round_<r>.npz` and then point `latest.json` at it, each file replaced whole. `keep` > 0: then delete
    every older round's file but round 0's (the model the run started from) and the newest `keep`."""
    path = directory / f"round_{round_id:04d}.npz"
    with atomic_writer(path) as handle:
        np.savez(handle, weights=weights.astype(np.float32), **{f"opt_{k}": v for k, v in optimizer_state.items()})
    write_atomic(directory / LATEST, json.dumps({"round": round_id, "file": path.name, **round_state},
                                                default=float).encode())
    if keep > 0:
        rounds = sorted(directory.glob("round_*.npz"))
        for old in rounds[:-keep]:
            if old.name != "round_0000.npz":
                old.unlink()  # latest.json already names a newer file: a crash here loses nothing a resume needs
    return path


def load_latest_checkpoint(directory: Path) -> Checkpoint | None:
    """The newest complete checkpoint, or None when there is none."""
    latest = read_json(directory / LATEST)
    if latest is None:
        return None
    with np.load(directory / str(latest["file"])) as archive:
        weights = archive["weights"].astype(np.float64)
        state = {name.removeprefix("opt_"): archive[name] for name in archive.files if name.startswith("opt_")}
    scalars = {k: v for k, v in latest.items() if k not in ("round", "file")}
    return Checkpoint(int(latest["round"]), weights, state, scalars)
