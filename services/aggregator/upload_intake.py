"""The aggregator's side of collecting uploads: which round is open, and whether a stream may join it.

A stream is staged chunk by chunk (`submission_staging`) and folded into the open
round's sums only once it has completed and verified (`round_state`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from services.aggregator.round_state import RoundState
from services.aggregator.submission_staging import StagedSubmission, StreamHeader, VerifiedSubmission
from services.common.errors import (
    DuplicateSubmissionError,
    MalformedChunkError,
    UnknownNodeError,
    WrongKeyError,
    WrongRoundError,
)
from services.common.protocol.chunking import ciphertexts_in_chunk
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundDecline, RoundKind
from services.common.protocol.upload import UploadChunk
from services.common.protocol.wire import plan_digest
from services.common.runtime.metrics import ServiceMetrics
from services.common.secure_sum.pairwise_masks import participant_set_hash

log = logging.getLogger(__name__)
RECORD_BUDGET_EXHAUSTED = "record_budget_exhausted"


class UploadIntake:
    def __init__(self, staging_dir: Path, members: frozenset[str], metrics: ServiceMetrics) -> None:
        self._staging_dir = staging_dir
        # Streams staged before a restart belong to rounds that are abandoned: none of them can ever be folded.
        if staging_dir.exists():
            shutil.rmtree(staging_dir)
        staging_dir.mkdir(parents=True, exist_ok=True)
        self._members = members
        self._metrics = metrics
        self._round: RoundState | None = None
        self._key: PublicKeyInfo | None = None
        # Nodes that declined because their record-level budget is spent: left out of later training rounds (they
        # still receive every model, and evaluate it).
        self.retired: set[str] = set()

    def open(self, state: RoundState, key: PublicKeyInfo | None) -> None:
        """From now on uploads go to `state`."""
        self._round, self._key = state, key

    @property
    def current(self) -> RoundState | None:
        return self._round

    def require_slot(self, node_id: str) -> None:
        """Refuse, by name, a stream from `node_id` unless it holds an upload slot now: the open attempt's
        participant (secure), or a node it still expects (plaintext), that has not uploaded yet. Checked when a
        stream starts, before its first chunk: no one else takes a slot."""
        current = self._round
        if current is None or current.plan.kind is RoundKind.EVALUATE:
            raise WrongRoundError(f"{node_id!r} holds no upload slot: no round is open for submissions")
        if node_id in current.contributors:
            raise DuplicateSubmissionError(f"node {node_id!r} already submitted round {current.round_id} attempt "
                                           f"{current.attempt}")
        members = current.participants if current.plan.secure else frozenset(current.expected)
        if node_id not in members:
            raise WrongRoundError(f"{node_id!r} holds no upload slot: it is not a participant still expected in "
                                  f"round {current.round_id} attempt {current.attempt}")

    def node_left(self, node_id: str) -> None:
        if self._round is not None:
            self._round.node_left(node_id)

    def decline(self, decline: RoundDecline) -> None:
        """A node refused the open attempt's plan: it is lost to this attempt, as if it had left."""
        self._metrics.plan_declined.labels(reason=decline.reason).inc()
        log.warning("node %s declined round %d attempt %d (%s): %s", decline.node_id, decline.round_id,
                    decline.attempt, decline.reason, decline.detail)
        if decline.reason == RECORD_BUDGET_EXHAUSTED and decline.node_id in self._members:
            self.retired.add(decline.node_id)
        current = self._round
        if current is not None and (current.round_id, current.attempt) == (decline.round_id, decline.attempt):
            current.node_left(decline.node_id)

    def begin(self, first: UploadChunk) -> tuple[RoundState, StagedSubmission]:
        """Admit a stream by its first chunk: the open round, a member, the round's key; one stream per node."""
        current = self._round
        if current is None or first.round_id != current.round_id:
            raise WrongRoundError(f"round {first.round_id} is not open for submissions")
        if first.attempt != current.attempt:
            raise WrongRoundError(f"attempt {first.attempt} of round {first.round_id} is closed; attempt "
                                  f"{current.attempt} is open")
        if first.node_id not in self._members:
            raise UnknownNodeError(f"node {first.node_id!r} is not a registered consortium member")
        plan = current.plan
        if plan.secure and first.key_id != plan.key_id:
            raise WrongKeyError(f"chunk names key {first.key_id!r}; round {plan.round_id} uses {plan.key_id!r}")
        current.start_stream(first.node_id)
        header = StreamHeader(current.round_id, first.key_id, first.node_id, plan.secure, plan.transfer.chunk_count,
                              plan.transfer.plaintext_chunk_values, plan.upload_value_count, plan.sum_layout,
                              plan.attempt, participant_set_hash(plan.participants), plan.transfer.chunk_ciphertexts,
                              plan_digest(plan), plan.model.sha256)
        key = self._key

        def check(index: int, payloads: list[bytes]) -> object:
            assert current.ciphertext_sum is not None and key is not None
            expected = ciphertexts_in_chunk(index, plan.upload_value_count, plan.layout, slots=key.slots,
                                            chunk_ciphertexts=plan.transfer.chunk_ciphertexts)
            if len(payloads) != expected:
                raise MalformedChunkError(f"chunk {index} carries {len(payloads)} ciphertexts, expected {expected}")
            return current.ciphertext_sum.parse_chunk(index, payloads)  # deserialized once, here

        staged = StagedSubmission(self._staging_dir, header, check,
                                  lambda index, parsed: current.fold_chunk(first.node_id, index, parsed, staged.path))
        return current, staged

    def complete(self, state: RoundState, submission: VerifiedSubmission) -> None:
        try:
            state.fold(submission)
        finally:
            submission.path.unlink(missing_ok=True)
        self._metrics.bytes_received.inc(submission.received_bytes)
        log.info("round %d: folded node %s (%d/%d)", state.round_id, submission.header.node_id,
                 len(state.contributors), len(state.expected))
