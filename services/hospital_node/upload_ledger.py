"""What a node has taken part in, on disk across restarts: under each key, the attempts of each round it joined and
the one round it released its feature statistics in.

A node uploads at most once per round attempt, so that no pairwise mask (bound to the key, the round and the
attempt) ever covers two encodings: the difference of two uploads under the same masks would be the difference of
the two updates, without the masks. Kept in memory only, that rule ended with the process: a deviating aggregator
could replay an attempt to a restarted node. The ledger is written (atomically, fsynced) before the node trains or
uploads for an attempt, so a crash after it only costs the attempt. Entries are per key id: a run under a new key
starts afresh.
"""

from __future__ import annotations

from pathlib import Path

from services.common.runtime.atomic_files import read_json, write_json_atomic


class UploadLedger:
    def __init__(self, path: Path) -> None:
        self._path = path
        stored = read_json(path) or {}
        self._attempts: dict[str, dict[int, list[int]]] = {
            key_id: {int(round_id): [int(a) for a in attempts] for round_id, attempts in rounds.items()}
            for key_id, rounds in stored.get("attempts", {}).items()}
        self._statistics: dict[str, int] = {key_id: int(r) for key_id, r in stored.get("statistics_round", {}).items()}

    def attempts(self, key_id: str, round_id: int) -> list[int]:
        """The attempts of `round_id` under `key_id` this node joined, in order."""
        return list(self._attempts.get(key_id, {}).get(round_id, []))

    def join(self, key_id: str, round_id: int, attempt: int) -> None:
        self._attempts.setdefault(key_id, {}).setdefault(round_id, []).append(attempt)
        self._save()

    def statistics_round(self, key_id: str) -> int | None:
        """The round this node released its feature statistics in under `key_id`, if any."""
        return self._statistics.get(key_id)

    def release_statistics(self, key_id: str, round_id: int) -> None:
        self._statistics[key_id] = round_id
        self._save()

    def _save(self) -> None:
        write_json_atomic(self._path, {
            "attempts": {key_id: {str(r): a for r, a in sorted(rounds.items())}
                         for key_id, rounds in self._attempts.items()},
            "statistics_round": self._statistics})
