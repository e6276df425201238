"""The aggregator's round loop: the sequence of a round, and nothing else.

open (plan and model to every connected node) -> collect (verified uploads folded
into the running sums, to quorum or deadline) -> seal -> decrypt (the key authority
returns the sum's field integers) -> apply (the strategy) -> record (checkpoint, row,
metrics). The parts it calls each own one thing: membership, the upload intake, the
privacy-budget guard, the run state, the strategies and the evaluation board.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from services.aggregator.config import AggregatorSettings
from services.aggregator.evaluation_board import EvaluationBoard, Row
from services.aggregator.key_authority_client import KeyAuthorityClient
from services.aggregator.membership import JoinTimeoutError, Membership
from services.aggregator.privacy_budget import PrivacyBudgetGuard
from services.aggregator.round_metrics import record_presence, record_round
from services.aggregator.round_planner import RoundPlanner, broadcast_chunks
from services.aggregator.round_state import RoundState, new_round_state
from services.aggregator.run_outcome import RunOutcome
from services.aggregator.run_state import RunState
from services.aggregator.strategies.head_refit import HeadRefit, HeadRefitError
from services.aggregator.submission_staging import VerifiedSubmission
from services.aggregator.sum_release import DecryptionObserver, release_mean
from services.aggregator.upload_intake import UploadIntake
from services.common.errors import DecryptionRefusedError, ImplausibleSumError
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import ModelChunk, RoundKind, TrainingFinished
from services.common.runtime.atomic_files import write_json_atomic
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.tracing import span
from services.common.secure_sum.ckks_params import load_public_context
from services.common.secure_sum.pooled_counts import POOLED_COUNTS_FILE, PooledCountsError, pool_counts

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5
Apply = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass
class RoundParts:
    membership: Membership
    intake: UploadIntake
    board: EvaluationBoard
    guard: PrivacyBudgetGuard
    run: RunState
    head_refit: HeadRefit


class RoundLoop:
    def __init__(self, settings: AggregatorSettings, metrics: ServiceMetrics, key_authority: KeyAuthorityClient,
                 *, parts: RoundParts, observer: DecryptionObserver | None = None) -> None:
        self._settings = settings
        self._metrics = metrics
        self._key_authority = key_authority
        self._parts = parts
        self._observer = observer
        self.key: PublicKeyInfo | None = None
        self.finished = threading.Event()
        self.failed = False
        self._checkpoints = settings.state_dir / "checkpoints"
        self._missed: dict[str, int] = {}  # consecutive sealed rounds each member was absent from
        parts.membership.on_leave(parts.intake.node_left)
        record_presence(metrics, self._missed, parts.membership.members, list(parts.membership.members))

    @property
    def current_round(self) -> int:
        current = self._parts.intake.current
        return current.round_id if current else 0

    def run(self, stop: threading.Event) -> None:
        run = self._parts.run
        try:
            self._run(stop)
        except JoinTimeoutError as error:  # the reason fits one line; a traceback would hide it
            self.failed = True
            log.error("cannot start: %s", error)
        except Exception:
            self.failed = True
            log.exception("round loop failed")
            raise
        finally:
            self._metrics.round_open.set(0)
            self._parts.membership.broadcast(TrainingFinished(run.completed_rounds))
            RunOutcome(self.failed, run.completed_rounds).write(self._settings.state_dir)
            self.finished.set()

    def _run(self, stop: threading.Event) -> None:
        s, p = self._settings, self._parts
        if p.run.finished:
            log.warning("the run finished before this restart (%d of %d training rounds applied, last round %d); "
                        "serving status and metrics, no round is opened", p.run.completed_rounds, s.rounds,
                        p.run.round_id)
            self._metrics.rounds_completed.set(p.run.completed_rounds)
            p.board.republish_last()
            return
        key = self.key = self._key_authority.public_key()
        self._public_context = load_public_context(key.context)
        self._metrics.secret_key.set(int(self._public_context.is_private()))
        planner = RoundPlanner(s, key, p.membership.spec,
                               upload_dimension=p.run.strategy.upload_dimension(p.membership.spec.count),
                               statistics_dimension=p.head_refit.upload_dimension)
        run = p.run
        if run.interrupted_round is not None:
            log.warning("resuming after round %d (%d of %d training rounds run, epsilon %.4g); round %d was "
                        "interrupted and is abandoned", run.round_id - 1 if run.pending_row is None else
                        int(str(run.pending_row["round"])), run.train_rounds, s.rounds, p.guard.epsilon,
                        run.interrupted_round)
        elif run.round_id:
            log.warning("resuming after round %d (%d of %d training rounds run, epsilon %.4g)", run.round_id,
                        run.train_rounds, s.rounds, p.guard.epsilon)
        run.checkpoint(self._checkpoints)
        self._metrics.rounds_completed.set(run.completed_rounds)
        p.membership.wait_for(s.expected_participants, s.min_participants, s.join_timeout_seconds, stop)
        pending: Row | None = run.pending_row
        while run.train_rounds < s.rounds:
            if stop.is_set():
                return
            if not self._allowed(planner, RoundKind.TRAIN, "round"):
                break
            row = self._sealed_round(planner, RoundKind.TRAIN, stop, run.strategy.apply)
            if stop.is_set() and row.get("failed"):
                return  # stopped mid-round: abandoned, as a crash would leave it
            run.train_rounds += 1
            run.completed_rounds += 0 if row.get("failed") else 1
            self._metrics.rounds_completed.set(run.completed_rounds)
            pending = self._finish(pending, row)
        if (s.head_refit and run.completed_rounds and not run.head_refit_done and not stop.is_set()
                and self._allowed(planner, RoundKind.HEAD_STATISTICS, "head refit")):
            row = {**self._sealed_round(planner, RoundKind.HEAD_STATISTICS, stop, p.head_refit.apply),
                   "head_refit": True}
            run.head_refit_done = True
            pending = self._finish(pending, row)
        # The closing evaluation asks the members connected now: a node answers only a plan whose set names it.
        self._open(planner, RoundKind.EVALUATE, participants=frozenset(p.membership.connected()))
        self._metrics.round_open.set(0)
        self._record(pending, None)
        if not stop.is_set():
            run.finish(self._checkpoints)  # on disk before the finished marker and TrainingFinished go out

    def _finish(self, pending: Row | None, row: Row) -> Row:
        """Write the previous round's row, then checkpoint with this one pending: a restart from here on goes on
        after this round, and writes its row once (rows are written once per round id)."""
        run = self._parts.run
        run.pending_row = self._record(pending, row)
        run.checkpoint(self._checkpoints)
        return row

    def _allowed(self, planner: RoundPlanner, kind: RoundKind, what: str) -> bool:
        guard = self._parts.guard
        if guard.allows(planner.quantization(kind)):
            return True
        self._metrics.record_refusal("privacy_budget")
        log.error("refusing the %s after round %d: epsilon would reach %.4g, above the budget %.4g", what,
                  self._parts.run.round_id, guard.projected_epsilon(planner.quantization(kind)), guard.budget)
        return False

    def _record(self, pending: Row | None, row: Row | None) -> Row | None:
        """Write the previous round's row, now that its model's evaluations came with the round just opened."""
        run = self._parts.run
        self._parts.board.write_row(run.round_id - 1, pending)
        if run.interrupted_round is not None:  # after the row of the round before it
            self._parts.board.write_row(run.interrupted_round, {
                "round": run.interrupted_round, "failed": True, "interrupted": True,
                "error": "abandoned: the aggregator restarted during this round"}, evaluated=False)
            run.interrupted_round = None
        return row

    def _open(self, planner: RoundPlanner, kind: RoundKind, attempt: int = 1,
              participants: frozenset[str] = frozenset()) -> RoundState:
        p = self._parts
        round_id = p.run.round_id if attempt > 1 else p.run.next_round(self._checkpoints)
        broadcast = broadcast_chunks(p.run.strategy.broadcast(p.run.weights))
        plan = planner.plan(round_id, kind, broadcast, attempt=attempt, participants=participants)
        expected = p.membership.connected() - (set() if kind is RoundKind.EVALUATE else p.intake.retired)
        state = new_round_state(plan, expected, self._public_context)
        p.board.expect(round_id - 1)  # nodes report on the model they receive: the one after round_id - 1
        p.intake.open(state, self.key)
        self._metrics.current_round.set(round_id)
        self._metrics.round_open.set(1)
        self._metrics.round_opened.set(time.time())
        log.info("round %d attempt %d opened for %s (%s)", round_id, attempt, sorted(participants or expected),
                 kind.value)
        p.membership.broadcast(plan)
        for index, values in enumerate(broadcast):
            p.membership.broadcast(ModelChunk(round_id, index, values))
        self._metrics.bytes_sent.inc(len(expected) * sum(len(c) for c in broadcast))
        if kind is RoundKind.EVALUATE:
            # Until every node still expected has reported: one that declines (a node that answers another
            # evaluation set withholds its report by name) is not waited for.
            p.board.wait_for(round_id - 1, lambda: state.waiting_for() & p.membership.connected(),
                             time.monotonic() + self._settings.round_deadline_seconds)
        return state

    def _collect(self, planner: RoundPlanner, kind: RoundKind, stop: threading.Event) -> RoundState:
        """Attempts of one round until one completes: each fixes its participant set S before any upload, and
        one that loses a member (gone, declined or silent until the deadline) is followed by another without it,
        while at least the quorum is left and attempts remain. The last attempt's state, sealed."""
        s, p = self._settings, self._parts
        participants = frozenset(p.membership.connected() - p.intake.retired)
        for attempt in range(1, s.max_attempts + 1):
            state = self._open(planner, kind, attempt, participants)
            deadline = time.monotonic() + s.round_deadline_seconds
            with state.lock:
                while (not state.complete() and not state.broken and time.monotonic() < deadline
                       and not stop.is_set()):
                    state.changed.wait(POLL_SECONDS)
            state.seal()
            if not s.secure or state.complete() or stop.is_set():
                return state
            left = frozenset(state.lost) if state.broken else participants - set(state.contributors)
            participants = (participants - left) & p.membership.connected()
            log.warning("round %d attempt %d lost %s%s", state.round_id, attempt, sorted(left),
                        "" if len(participants) >= s.min_participants and attempt < s.max_attempts
                        else "; no attempt left")
            if len(participants) < s.min_participants:
                return state
        return state

    def _sealed_round(self, planner: RoundPlanner, kind: RoundKind, stop: threading.Event, apply: Apply) -> Row:
        try:
            return self._round(planner, kind, stop, apply)
        finally:
            self._metrics.round_open.set(0)

    def _round(self, planner: RoundPlanner, kind: RoundKind, stop: threading.Event, apply: Apply) -> Row:
        """Collect (in attempts), seal, decrypt, charge the release, apply and checkpoint: the round's row, marked
        failed when no attempt completed with the quorum, the sum was corrupted (nothing decrypted then), the key
        authority refused it, it was out of bounds, or the strategy refused it (the model stays as it was)."""
        with span("aggregator.round", kind=kind.name.lower()) as round_span:
            row = self._traced_round(planner, kind, stop, apply)
            round_span.set_attribute("round", int(str(row["round"])))
            return row

    def _traced_round(self, planner: RoundPlanner, kind: RoundKind, stop: threading.Event, apply: Apply) -> Row:
        s, p = self._settings, self._parts
        started = time.monotonic()
        with span("aggregator.collect"):
            state = self._collect(planner, kind, stop)
        record_presence(self._metrics, self._missed, p.membership.members, list(state.contributors))
        participants = len(state.contributors)
        row: Row = {"round": state.round_id, "attempt": state.attempt, "participants": participants,
                    "contributors": sorted(state.contributors), "learning_rate": state.plan.training.learning_rate}
        if participants < s.min_participants or state.corrupted or (s.secure and not state.complete()):
            log.error("round %d failed: %d participants (quorum %d)%s", state.round_id, participants,
                      s.min_participants, ", sum corrupted" if state.corrupted else "")
            row.update(failed=True, seconds=time.monotonic() - started, epsilon=p.guard.epsilon)
            return row
        decrypt_start = time.monotonic()
        # Charged, on disk, before the sum goes to the key authority: a crash after the decryption can never
        # forget the release (a refused decryption stays charged: the conservative side).
        with span("aggregator.charge_privacy"):
            p.guard.spend(state.plan.quantization, participants)
            p.run.save_accountant(self._checkpoints)
        try:
            with span("aggregator.release", round=state.round_id, attempt=state.attempt):
                mean_upload = release_mean(state, self._key_authority, self._observer,
                                           retry_seconds=s.decrypt_retry_seconds, stop=stop)
        except DecryptionRefusedError as refused:
            return self._failed(row, started, "key_authority_refused", refused)
        except ImplausibleSumError as implausible:
            return self._failed(row, started, "implausible_sum", implausible)
        decrypt_seconds = time.monotonic() - decrypt_start
        apply_start = time.monotonic()
        try:
            with span("aggregator.apply"):
                p.run.weights = apply(p.run.weights, mean_upload, participants)
        except HeadRefitError as refused:
            log.error("round %d: %s; the model stays as it was", state.round_id, refused)
            row.update(failed=True, error=str(refused))
        apply_seconds = time.monotonic() - apply_start
        seconds = time.monotonic() - started
        contributors = [state.contributors[node] for node in sorted(state.contributors)]
        phases = record_round(self._metrics, state, contributors, seconds=seconds, decrypt_seconds=decrypt_seconds,
                              apply_seconds=apply_seconds,
                              epsilon=p.guard.epsilon, round_epsilon=p.guard.round_epsilon(state.plan.quantization,
                                                                                           participants))
        row.update(seconds=seconds, epsilon=p.guard.epsilon, phases=phases, **self._record_privacy(contributors))
        self._pool_class_counts(state, contributors)
        log.info("round %d sealed: %d participants, %.1f s, epsilon %.4g", state.round_id, participants, seconds,
                 p.guard.epsilon)
        return row

    def _pool_class_counts(self, state: RoundState, contributors: list[VerifiedSubmission]) -> None:
        """The first sealed round whose participants all sent masked class counts gives the pooled counts
        (`services.common.secure_sum.pooled_counts`), written once to the state directory for the report."""
        path = self._settings.state_dir / POOLED_COUNTS_FILE
        sent = {c.header.node_id: c.masked_class_counts for c in contributors if c.masked_class_counts}
        if not sent or path.exists():
            return
        participants = sorted(state.contributors)
        if set(sent) != set(participants):
            log.info("round %d: no pooled class counts: %s sent none (under record-level DP-SGD, or already sent "
                     "for another participant set)", state.round_id, sorted(set(participants) - set(sent)))
            return
        try:
            pooled = pool_counts(sent, participants)
        except PooledCountsError as error:
            log.warning("round %d: no pooled class counts: %s", state.round_id, error)
            return
        names = list(self._parts.membership.class_names or ())
        write_json_atomic(path, {"round": state.round_id, "attempt": state.attempt, "hospitals": participants,
                                 "classes": names, "counts": list(pooled)})
        log.info("round %d: pooled class counts of %d hospitals: %s", state.round_id, len(participants),
                 ", ".join(f"{name} {count}" for name, count in zip(names, pooled, strict=False)))

    def _record_privacy(self, contributors: list[VerifiedSubmission]) -> Row:
        """The record-level epsilon each hospital reports having spent, and the largest any has reported so far
        (a hospital that stops contributing keeps its last figure), and the contributors that trained without it.
        Nothing when no hospital trains under DP-SGD."""
        run = self._parts.run
        for submission in contributors:
            if submission.record_privacy is not None:
                node = submission.header.node_id
                run.record_epsilon[node] = submission.record_privacy.epsilon
                self._metrics.record_epsilon.labels(node=node).set(submission.record_privacy.epsilon)
        if not run.record_epsilon:
            return {}
        reported = {c.header.node_id: c.record_privacy.epsilon for c in contributors if c.record_privacy is not None}
        units = {c.record_privacy.unit for c in contributors if c.record_privacy is not None}
        # "per patient" only when every hospital's epsilon protects a patient; any image-level one makes it images.
        unit = "patient" if units == {"patient"} else "image"
        privacy: Row = {"record_epsilon": reported, "record_epsilon_max": max(run.record_epsilon.values()),
                        "record_epsilon_unit": unit}
        without = sorted(c.header.node_id for c in contributors if c.record_privacy is None)
        if without:  # hospitals that turned DP-SGD off while others keep it: the row says who
            privacy["record_dp_off"] = without
        return privacy

    def _failed(self, row: Row, started: float, reason: str, error: Exception) -> Row:
        """A round whose sum was refused: the model stays, the run goes on."""
        self._metrics.record_refusal(reason)
        log.error("round %s failed: %s; the model stays as it was", row["round"], error)
        row.update(failed=True, error=str(error), seconds=time.monotonic() - started, epsilon=self._parts.guard.epsilon)
        return row
