"""Atomic per-round checkpoints: the global model, optimizer state and round state."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def save_checkpoint(directory: Path, round_id: int, weights: np.ndarray, optimizer_state: dict[str, np.ndarray],
                    round_state: dict[str, Any]) -> Path:
    """Write `round_<r>.npz` and then point `latest.json` at it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"round_{round_id:04d}.npz"
    temporary = path.with_name(path.name + ".tmp.npz")
    np.savez(temporary, weights=weights.astype(np.float32), **{f"opt_{k}": v for k, v in optimizer_state.items()})
    temporary.replace(path)
    _atomic_write(directory / "latest.json", json.dumps({"round": round_id, "file": path.name, **round_state},
                                                        default=float).encode())
    return path
