"""The state of one open round: who may submit, what was folded, and the sealed manifest."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import tenseal as ts

from services.aggregator.submission_staging import VerifiedSubmission, plaintext_values, read_staged
from services.common.errors import DuplicateSubmissionError, WrongRoundError
from services.common.he_codec import RunningCiphertextSum
from services.common.round_plan import RoundKind, RoundPlan


@dataclass
class RoundState:
    """One attempt of one round. In secure mode its participant set is fixed before any upload: the masks cancel
    only over all of it, so the attempt completes when every participant's upload is folded, and breaks as soon
    as one of them leaves or declines."""

    round_id: int
    plan: RoundPlan
    expected: set[str]
    opened_at: float = field(default_factory=time.monotonic)
    contributors: dict[str, VerifiedSubmission] = field(default_factory=dict)
    in_flight: set[str] = field(default_factory=set)
    sealed: bool = False
    corrupted: bool = False
    lost: set[str] = field(default_factory=set)  # participants that left or declined before their upload was folded
    fold_seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    changed: threading.Condition = field(init=False)
    ciphertext_sum: RunningCiphertextSum | None = None
    plaintext_sum: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.changed = threading.Condition(self.lock)

    @property
    def attempt(self) -> int:
        return self.plan.attempt

    @property
    def participants(self) -> frozenset[str]:
        return frozenset(self.plan.participants)

    def start_stream(self, node_id: str) -> None:
        with self.lock:
            if self.plan.secure and node_id not in self.participants:
                raise WrongRoundError(f"node {node_id!r} is not in the participant set of round {self.round_id} "
                                      f"attempt {self.attempt}")
            # Checked before the seal: a retry of a folded upload learns that it was counted, not that it is late.
            if node_id in self.contributors:
                raise DuplicateSubmissionError(f"node {node_id!r} already submitted to round {self.round_id}")
            if self.sealed:
                raise WrongRoundError(f"round {self.round_id} is sealed; submission of {node_id!r} is late")
            if node_id in self.in_flight:
                raise DuplicateSubmissionError(f"node {node_id!r} already has an upload to round {self.round_id} "
                                               "in flight")
            self.in_flight.add(node_id)

    def abandon_stream(self, node_id: str) -> None:
        with self.lock:
            self.in_flight.discard(node_id)
            self.changed.notify_all()

    def fold(self, submission: VerifiedSubmission) -> None:
        """Add a verified submission to the running sums; a failure here poisons the round."""
        node_id = submission.header.node_id
        start = time.perf_counter()
        with self.lock:
            self.in_flight.discard(node_id)
            if self.sealed:
                raise WrongRoundError(f"round {self.round_id} was sealed while {node_id!r} uploaded")
            try:
                self._fold_locked(submission)
            except Exception:
                self.corrupted = True
                raise
            self.contributors[node_id] = submission
            self.fold_seconds += time.perf_counter() - start
            self.changed.notify_all()

    def _fold_locked(self, submission: VerifiedSubmission) -> None:
        if self.plan.secure:
            assert self.ciphertext_sum is not None
            total = self.ciphertext_sum
            for index, chunk in enumerate(read_staged(submission, self.plan.transfer.chunk_ciphertexts)):
                total.fold(index, total.parse_chunk(index, chunk))
            total.contributions += 1
            return
        assert self.plaintext_sum is not None
        offset = 0
        for (payload,) in read_staged(submission, 1):
            values = plaintext_values(payload)
            self.plaintext_sum[offset : offset + values.size] += values
            offset += values.size

    def complete(self) -> bool:
        """Secure: every participant has been folded. Plaintext: every node still expected has."""
        if self.plan.secure:
            return self.participants <= set(self.contributors)
        return bool(self.expected) and self.expected <= set(self.contributors)

    @property
    def broken(self) -> bool:
        """A participant is gone before its upload was folded: the masks can no longer cancel."""
        return self.plan.secure and bool(self.lost)

    def node_left(self, node_id: str) -> None:
        with self.lock:
            self.expected.discard(node_id)
            if node_id in self.participants and node_id not in self.contributors:
                self.lost.add(node_id)
            self.changed.notify_all()

    def seal(self) -> list[VerifiedSubmission]:
        with self.lock:
            self.sealed = True
            return [self.contributors[node] for node in sorted(self.contributors)]


def new_round_state(plan: RoundPlan, expected: set[str], public_context: ts.Context | None) -> RoundState:
    state = RoundState(plan.round_id, plan, set(expected))
    if plan.secure and plan.kind is not RoundKind.EVALUATE and not plan.participants:
        raise ValueError(f"round {plan.round_id}: a secure attempt needs its participant set")
    if plan.secure:
        assert public_context is not None
        state.ciphertext_sum = RunningCiphertextSum(public_context, plan.transfer.chunk_count)
    else:
        state.plaintext_sum = np.zeros(plan.upload_value_count, dtype=np.float64)
    return state
