"""The attempts a node joined and its statistics round survive a restart (a new ledger on the same file)."""

from __future__ import annotations

from pathlib import Path

from services.hospital_node.upload_ledger import UploadLedger


def test_joined_attempts_and_the_statistics_round_are_kept_across_a_restart_per_key(tmp_path: Path) -> None:
    path = tmp_path / "state" / "uploads.json"
    ledger = UploadLedger(path)
    assert ledger.attempts("k1", 3) == [] and ledger.statistics_round("k1") is None
    ledger.join("k1", 3, 1)
    ledger.join("k1", 3, 2)
    ledger.join("k1", 4, 1)
    ledger.release_statistics("k1", 5)
    restarted = UploadLedger(path)
    assert restarted.attempts("k1", 3) == [1, 2] and restarted.attempts("k1", 4) == [1]
    assert restarted.attempts("k1", 5) == [] and restarted.statistics_round("k1") == 5
    # Another key (a new run's): its masks are other masks, so nothing of the first key's applies.
    assert restarted.attempts("k2", 3) == [] and restarted.statistics_round("k2") is None
    attempts = restarted.attempts("k1", 3)
    attempts.append(9)  # a copy: the ledger changes only through join
    assert UploadLedger(path).attempts("k1", 3) == [1, 2] and restarted.attempts("k1", 3) == [1, 2]
