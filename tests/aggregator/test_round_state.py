"""Who may still open an upload stream to a round, and what a refusal is called."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import pytest

from services.aggregator.round_state import RoundState
from services.aggregator.submission_staging import VerifiedSubmission
from tests.plans import PLAN
from services.common.errors import DuplicateSubmissionError, WrongRoundError


def _state(*expected: str) -> RoundState:
    return RoundState(3, replace(PLAN, round_id=3, participants=tuple(sorted(expected))), set(expected))


def test_a_replay_of_a_folded_upload_is_a_duplicate_even_after_the_seal() -> None:
    state = _state("a", "b")
    state.contributors["a"] = cast(VerifiedSubmission, None)  # only membership matters here
    with pytest.raises(DuplicateSubmissionError, match="'a' already submitted to round 3"):
        state.start_stream("a")
    state.seal()
    with pytest.raises(DuplicateSubmissionError, match="'a' already submitted to round 3"):
        state.start_stream("a")
    with pytest.raises(WrongRoundError, match="round 3 is sealed"):
        state.start_stream("b")


def test_a_second_stream_while_one_is_in_flight_is_refused_and_late_once_sealed() -> None:
    state = _state("a")
    state.start_stream("a")
    with pytest.raises(DuplicateSubmissionError, match="already has an upload to round 3 in flight"):
        state.start_stream("a")
    state.seal()
    # The upload in flight will not be folded into a sealed round, so the node is told it is late.
    with pytest.raises(WrongRoundError, match="is late"):
        state.start_stream("a")


def test_an_abandoned_stream_may_be_started_again_while_the_round_is_open() -> None:
    state = _state("a")
    state.start_stream("a")
    state.abandon_stream("a")
    state.start_stream("a")
    assert state.in_flight == {"a"}


def test_only_a_participant_of_the_attempt_may_stream_and_losing_one_breaks_it() -> None:
    state = _state("a", "b")
    with pytest.raises(WrongRoundError, match="'c' is not in the participant set of round 3 attempt 2"):
        state.start_stream("c")
    assert not state.broken
    state.contributors["a"] = cast(VerifiedSubmission, None)
    state.node_left("a")  # already folded: its masks are in the sum
    assert not state.broken
    state.node_left("b")  # not folded: the masks can no longer cancel
    assert state.broken and state.lost == {"b"} and not state.complete()
