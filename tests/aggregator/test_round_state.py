"""Who may still open an upload stream to a round, and what a refusal is called."""

from __future__ import annotations

import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.round_state import RoundState
from services.common.errors import DuplicateSubmissionError, WrongRoundError


def test_a_replay_is_named_a_duplicate_before_and_after_the_round_is_sealed() -> None:
    state = RoundState(3, pb.RoundPlan(round_id=3), {"a", "b"})
    state.start_stream("a")
    with pytest.raises(DuplicateSubmissionError, match="'a' already submitted to round 3"):
        state.start_stream("a")
    state.seal()
    with pytest.raises(DuplicateSubmissionError):
        state.start_stream("a")
    with pytest.raises(WrongRoundError, match="round 3 is sealed"):
        state.start_stream("b")


def test_an_abandoned_stream_may_be_started_again_while_the_round_is_open() -> None:
    state = RoundState(1, pb.RoundPlan(round_id=1), {"a"})
    state.start_stream("a")
    state.abandon_stream("a")
    state.start_stream("a")
    assert state.in_flight == {"a"}
