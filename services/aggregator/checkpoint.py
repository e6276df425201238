"""Atomic per-round checkpoints: the global model, optimizer state and round state."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from services.common.atomic_files import atomic_writer, write_atomic


def save_checkpoint(directory: Path, round_id: int, weights: np.ndarray, optimizer_state: dict[str, np.ndarray],
                    round_state: dict[str, Any]) -> Path:
    """Write `round_<r>.npz` and then point `latest.json` at it, each file replaced whole."""
    path = directory / f"round_{round_id:04d}.npz"
    with atomic_writer(path) as handle:
        np.savez(handle, weights=weights.astype(np.float32), **{f"opt_{k}": v for k, v in optimizer_state.items()})
    write_atomic(directory / "latest.json", json.dumps({"round": round_id, "file": path.name, **round_state},
                                                       default=float).encode())
    return path
