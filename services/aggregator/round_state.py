"""The state of one open round: who may submit, what was folded, and the sealed manifest.

Secure rounds fold each chunk into the running sums as it arrives (`fold_chunk`), once it is
checked and staged; the upload counts only once its stream's attestation verifies (`fold`).
A stream that fails before then, or is still in flight when the round is sealed, has its
folded chunks subtracted again from their staged copies: ciphertext addition is exact
modular arithmetic, so the sums come back bit for bit as if it had never been folded.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tenseal as ts

from services.aggregator.submission_staging import VerifiedSubmission, plaintext_values, read_staged
from services.common.errors import DuplicateSubmissionError, WrongRoundError
from services.common.protocol.round_plan import RoundKind, RoundPlan
from services.common.secure_sum.he_codec import RunningCiphertextSum


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
    # Secure: each in-flight stream's staged file and the chunks of it already folded into the sums.
    partial: dict[str, tuple[Path, list[int]]] = field(default_factory=dict)
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
        """A stream that failed: whatever of it was folded is subtracted (from its staged copy, still on disk)."""
        with self.lock:
            self.in_flight.discard(node_id)
            self._unfold_locked(node_id)
            self.changed.notify_all()

    def fold_chunk(self, node_id: str, index: int, parsed: object, staged: Path) -> None:
        """Fold one checked, staged chunk of a stream in flight into the running sums (secure rounds)."""
        start = time.perf_counter()
        with self.lock:
            if self.sealed:
                raise WrongRoundError(f"round {self.round_id} was sealed while {node_id!r} uploaded")
            if node_id not in self.in_flight:
                raise WrongRoundError(f"node {node_id!r} has no upload to round {self.round_id} in flight")
            assert self.ciphertext_sum is not None and isinstance(parsed, list)
            self.ciphertext_sum.fold(index, parsed)
            self.partial.setdefault(node_id, (staged, []))[1].append(index)
            self.fold_seconds += time.perf_counter() - start

    def _unfold_locked(self, node_id: str) -> None:
        staged, indices = self.partial.pop(node_id, (None, []))
        if staged is None or not indices:
            return
        assert self.ciphertext_sum is not None
        total = self.ciphertext_sum
        start = time.perf_counter()
        try:
            for index, chunk in zip(indices, read_staged(staged, self.plan.transfer.chunk_ciphertexts)):
                total.unfold(index, total.parse_chunk(index, chunk))
        except Exception:
            self.corrupted = True  # the sum can no longer be trusted: the round fails, nothing is decrypted
            raise
        finally:
            self.fold_seconds += time.perf_counter() - start

    def fold(self, submission: VerifiedSubmission) -> None:
        """Count a verified submission: in secure rounds its chunks are in the sums already, in plaintext rounds
        they are added now. A failure here poisons the round."""
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
            _, indices = self.partial.pop(submission.header.node_id, (None, []))
            if indices != list(range(submission.header.chunk_count)):
                raise WrongRoundError(f"node {submission.header.node_id!r}'s chunks {indices} are not all folded")
            self.ciphertext_sum.contributions += 1
            return
        assert self.plaintext_sum is not None
        offset = 0
        for (payload,) in read_staged(submission.path, 1):
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

    def waiting_for(self) -> set[str]:
        """The nodes this attempt still expects (one that declines or leaves is no longer expected)."""
        with self.lock:
            return set(self.expected)

    def node_left(self, node_id: str) -> None:
        with self.lock:
            self.expected.discard(node_id)
            if node_id in self.participants and node_id not in self.contributors:
                self.lost.add(node_id)
            self.changed.notify_all()

    def seal(self) -> list[VerifiedSubmission]:
        """Close the attempt; streams still in flight have what they folded subtracted before anything uses the
        sums."""
        with self.lock:
            self.sealed = True
            for node_id in list(self.partial):
                self._unfold_locked(node_id)
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
