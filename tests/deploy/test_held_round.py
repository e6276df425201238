"""compose-test's chaos step kills the aggregator only inside a round the frozen hospital holds open."""

from __future__ import annotations

import json

import pytest

from deploy.held_round import held_round

pytestmark = pytest.mark.unit  # reads log text only
FIVE = "['hospital-1', 'hospital-2', 'hospital-3', 'hospital-4', 'hospital-5']"


def _log(*messages: str) -> str:
    return "\n".join(json.dumps({"level": "INFO", "logger": "aggregator", "msg": m}) for m in messages)


def _folded(round_id: int, nodes: range) -> list[str]:
    return [f"round {round_id}: folded node hospital-{i} ({k}/5)" for k, i in enumerate(nodes, 1)]


def test_a_round_with_every_upload_but_the_frozen_ones_folded_is_held() -> None:
    log = _log(f"round 1 attempt 1 opened for {FIVE} (train)", *_folded(1, range(1, 5)))
    assert held_round(log, "hospital-5") == 1


def test_a_round_still_waiting_for_another_upload_is_not_yet_held() -> None:
    log = _log(f"round 1 attempt 1 opened for {FIVE} (train)", *_folded(1, range(1, 4)))
    assert held_round(log, "hospital-5") is None


def test_a_round_the_frozen_hospital_uploaded_to_seals_and_its_successor_is_the_held_one() -> None:
    log = _log(f"round 1 attempt 1 opened for {FIVE} (train)", *_folded(1, range(1, 6)),
               "round 1 sealed: 5 participants, 2.0 s, epsilon 9", f"round 2 attempt 1 opened for {FIVE} (train)")
    assert held_round(log, "hospital-5") is None
    assert held_round(log + "\n" + _log(*_folded(2, range(1, 5))), "hospital-5") == 2


def test_a_round_without_the_frozen_hospital_or_one_that_failed_is_not_held() -> None:
    four = "['hospital-1', 'hospital-2', 'hospital-3', 'hospital-4']"
    assert held_round(_log(f"round 3 attempt 2 opened for {four} (train)", *_folded(3, range(1, 5))),
                      "hospital-5") is None
    failed = _log(f"round 1 attempt 1 opened for {FIVE} (train)", *_folded(1, range(1, 5)),
                  "round 1 failed: 4 participants (quorum 3)")
    assert held_round(failed, "hospital-5") is None
