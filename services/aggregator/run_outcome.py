"""How a run ended, as the aggregator leaves it for launchers: `STATE_DIR/finished.json`."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from services.common.runtime.atomic_files import read_json, write_json_atomic

FINISHED_MARKER = "finished.json"


@dataclass(frozen=True)
class RunOutcome:
    failed: bool
    completed_rounds: int

    def write(self, state_dir: Path) -> None:
        # Atomic: a launcher polls for this file and reads it the moment it exists.
        write_json_atomic(state_dir / FINISHED_MARKER, asdict(self))

    @classmethod
    def read(cls, state_dir: Path) -> RunOutcome | None:
        """The outcome, or None while the run has not finished."""
        value = read_json(state_dir / FINISHED_MARKER)
        if value is None:
            return None
        return cls(failed=bool(value["failed"]), completed_rounds=int(value["completed_rounds"]))
