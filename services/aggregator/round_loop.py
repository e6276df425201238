"""The aggregator's round loop: open, broadcast, collect to quorum, seal, decrypt, apply.

The servicer calls into `Coordinator`; the loop runs on its own thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.checkpoint import save_checkpoint
from services.aggregator.config import AggregatorSettings
from services.aggregator.fedadam import FedAdam
from services.aggregator.fedavg import FedAvg
from services.aggregator.key_authority_client import KeyAuthorityClient, PublicKeyInfo
from services.aggregator.pooled_evaluation import PooledEvaluation, pool_reports, validate_report
from services.aggregator.round_schedule import round_learning_rate
from services.aggregator.round_state import RoundState, new_round_state
from services.aggregator.run_outcome import RunOutcome
from services.aggregator.submission_staging import StagedSubmission, StreamHeader, VerifiedSubmission
from services.common.atomic_files import append_line_atomic, atomic_writer, write_json_atomic
from services.common.chunking import MODEL_CHUNK_VALUES, chunk_count, float32_chunks
from services.common.ckks_params import load_public_context
from services.common.encryption_pool import ciphertexts_in_chunk, upload_chunk_count
from services.common.errors import (
    MalformedChunkError,
    PrivacyBudgetError,
    UnknownNodeError,
    WrongKeyError,
    WrongRoundError,
)
from services.common.metrics import ServiceMetrics
from services.common.model_spec import ParameterSpec, upload_value_count
from services.common.packing import FieldLayout
from services.common.head_refit import HeadPositions, lda_head, moments_from_statistics, statistics_dimension
from services.common.privacy_accountant import SkellamAccountant, round_privacy
from services.common.stream_digest import NodeKeyRegistry
from services.common.update_codec import QuantizationPlan, decode_mean_update, plan_quantization, plan_statistics

log = logging.getLogger(__name__)
POLL_SECONDS = 0.5


def sum_layout(plan: pb.RoundPlan) -> int:
    """The layout a round's uploads are packed, signed and unpacked in."""
    return pb.SUM_LAYOUT_STATISTICS if plan.head_statistics else pb.SUM_LAYOUT_UPDATE


@dataclass
class Subscriber:
    node_id: str
    outbox: queue.Queue[pb.RoundMessage | None]


class Coordinator:
    def __init__(self, settings: AggregatorSettings, metrics: ServiceMetrics, key_authority: KeyAuthorityClient,
                 registry: NodeKeyRegistry, spec: ParameterSpec, initial_weights: np.ndarray,
                 head: HeadPositions) -> None:
        self._settings = settings
        self._metrics = metrics
        self._key_authority = key_authority
        self._registry = registry
        self._spec = spec
        self._head = head
        self.weights = initial_weights.astype(np.float64)
        # SCAFFOLD's c (Karimireddy et al., ICML 2020): the mean of the nodes' control variates, None when off.
        self.control = np.zeros(spec.count) if settings.drift_correction else None
        self._upload_count = upload_value_count(spec.count, settings.drift_correction)
        self._optimizer = (FedAdam(settings.server_learning_rate, settings.fedadam_beta1, settings.fedadam_beta2,
                                   settings.fedadam_tau)
                           if settings.server_optimizer == "fedadam" else FedAvg(settings.server_learning_rate,
                                                                                settings.server_momentum))
        self._accountant = SkellamAccountant(delta=settings.delta)
        self._subscribers: dict[str, Subscriber] = {}
        self._subscribers_lock = threading.Condition()
        self._round: RoundState | None = None
        self._evaluations: dict[int, dict[str, pb.EvaluationReport]] = {}
        self._evaluations_lock = threading.Condition()
        self.key: PublicKeyInfo | None = None
        self._public_context = None
        self.finished = threading.Event()
        self.failed = False
        self.completed_rounds = 0
        self._state_dir = settings.state_dir
        self._staging = settings.state_dir / "staging"
        self._round_log = settings.state_dir / "rounds.jsonl"

    # ------------------------------------------------------------------ nodes
    def subscribe(self, request: pb.JoinRequest, is_active: Callable[[], bool]) -> Iterator[pb.RoundMessage]:
        if request.node_id not in self._registry.node_ids:
            raise UnknownNodeError(f"node {request.node_id!r} is not a registered consortium member")
        spec = ParameterSpec(request.parameter_count, request.parameter_digest, (), ())
        self._spec.require_equal(spec)
        subscriber = Subscriber(request.node_id, queue.Queue())
        with self._subscribers_lock:
            self._subscribers[request.node_id] = subscriber
            self._subscribers_lock.notify_all()
        log.info("node %s subscribed (%d connected)", request.node_id, len(self._subscribers))
        try:
            while is_active():
                try:
                    message = subscriber.outbox.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if message is None:
                    return
                yield message
        finally:
            with self._subscribers_lock:
                if self._subscribers.get(request.node_id) is subscriber:
                    del self._subscribers[request.node_id]
            current = self._round
            if current is not None:
                current.node_left(request.node_id)
            log.info("node %s disconnected", request.node_id)

    def begin_submission(self, first: pb.UpdateChunk) -> tuple[RoundState, StagedSubmission]:
        current = self._round
        if current is None or first.round_id != current.round_id:
            raise WrongRoundError(f"round {first.round_id} is not open for submissions")
        if first.node_id not in self._registry.node_ids:
            raise UnknownNodeError(f"node {first.node_id!r} is not a registered consortium member")
        plan = current.plan
        if plan.secure and first.key_id != plan.key_id:
            raise WrongKeyError(f"chunk names key {first.key_id!r}; round {plan.round_id} uses {plan.key_id!r}")
        current.start_stream(first.node_id)
        header = StreamHeader(current.round_id, first.key_id, first.node_id, plan.secure, plan.chunk_count,
                              plan.plaintext_chunk_values, plan.upload_value_count,
                              sum_layout(plan))

        def check(index: int, payloads: list[bytes]) -> None:
            assert current.ciphertext_sum is not None and self.key is not None
            layout = FieldLayout(plan.bits, plan.max_participants, plan.fields_per_slot)
            expected = ciphertexts_in_chunk(index, plan.upload_value_count, layout, self.key.slots,
                                            plan.chunk_ciphertexts)
            if len(payloads) != expected:
                raise MalformedChunkError(f"chunk {index} carries {len(payloads)} ciphertexts, expected {expected}")
            current.ciphertext_sum.parse_chunk(index, payloads)

        return current, StagedSubmission(self._staging, header, check)

    def complete_submission(self, state: RoundState, submission: VerifiedSubmission) -> None:
        try:
            state.fold(submission)
        finally:
            submission.path.unlink(missing_ok=True)
        self._metrics.bytes_received.inc(submission.received_bytes)
        log.info("round %d: folded node %s (%d/%d)", state.round_id, submission.header.node_id,
                 len(state.contributors), len(state.expected))

    def report_evaluation(self, report: pb.EvaluationReport) -> None:
        if report.node_id not in self._registry.node_ids:
            raise UnknownNodeError(f"node {report.node_id!r} is not a registered consortium member")
        validate_report(report, self._settings.num_classes)
        with self._evaluations_lock:
            self._evaluations.setdefault(report.model_round, {})[report.node_id] = report
            self._evaluations_lock.notify_all()

    @property
    def current_round(self) -> int:
        return self._round.round_id if self._round else 0

    # ------------------------------------------------------------------ loop
    def run(self, stop: threading.Event) -> None:
        try:
            self._run(stop)
        except Exception:
            self.failed = True
            log.exception("round loop failed")
            raise
        finally:
            self._broadcast(pb.RoundMessage(finished=pb.TrainingFinished(rounds=self.completed_rounds)))
            RunOutcome(self.failed, self.completed_rounds).write(self._state_dir)
            self.finished.set()

    def _run(self, stop: threading.Event) -> None:
        settings = self._settings
        self.key = self._key_authority.public_key()
        if settings.secure and settings.min_participants < self.key.min_participants:
            raise PrivacyBudgetError(f"aggregator quorum {settings.min_participants} is below the key authority's "
                                     f"policy of {self.key.min_participants} participants")
        self._public_context = load_public_context(self.key.context)
        self._metrics.secret_key.set(int(self._public_context.is_private()))
        layout = FieldLayout(self.key.bits, self.key.max_participants, self.key.fields_per_slot)
        quantization = self._quantization_plan(layout)
        if settings.secure:
            log.info("plan: clip %.3g, scale %.4g, %d-bit fields, coordinate bound %d, noise %s variance %.4g, "
                     "L2 sensitivity %.4g", quantization.clip_norm, quantization.scale, quantization.bits,
                     quantization.coordinate_bound, quantization.noise_kind, quantization.noise_variance,
                     quantization.l2_sensitivity)
        if settings.drift_correction and settings.local_optimizer == "adamw":
            log.warning("drift correction with local AdamW did worse than plain FedAvg in the measured runs: AdamW "
                        "turns the steady correction into full-size steps (docs/RESULTS.md, 'Drift correction')")
        save_checkpoint(self._state_dir / "checkpoints", 0, self.weights, self._server_state(), {"epsilon": 0.0})
        self._wait_for_nodes(stop)
        pending_row: dict[str, object] | None = None
        for round_id in range(1, settings.rounds + 1):
            if stop.is_set():
                return
            if settings.secure:
                projected = self._accountant.epsilon_after(round_privacy(quantization, settings.min_participants))
                if projected > settings.epsilon_budget:
                    self._metrics.record_refusal("privacy_budget")
                    log.error("refusing round %d: epsilon would reach %.4g, above the budget %.4g",
                              round_id, projected, settings.epsilon_budget)
                    break
            row = self._run_round(round_id, quantization, stop)
            self.completed_rounds += 0 if row.get("failed") else 1
            self._write_row(round_id - 1, pending_row)
            pending_row = row
        if settings.head_refit and self.completed_rounds and not stop.is_set():
            refit = self._refit_head(self.current_round + 1, stop)
            if refit is not None:
                self._write_row(self.current_round - 1, pending_row)
                pending_row = refit
        final = self.current_round + 1
        self._open_round(final, quantization, evaluate_only=True)
        self._write_row(final - 1, pending_row)

    def _statistics_plan(self) -> QuantizationPlan:
        """The plan of the head refit's statistics, in the statistics layout (one wide field per slot), the clip
        norm at the coordinate bound."""
        assert self.key is not None
        s = self._settings
        layout = FieldLayout(self.key.statistics_bits, self.key.max_participants, 1)
        dimension = statistics_dimension(self._head.num_classes, self._head.features)
        pieces = upload_chunk_count(dimension, layout, self.key.slots, s.chunk_ciphertexts)
        return plan_statistics(dimension, s.clip_norm, layout.bits, layout.max_participants, s.min_participants,
                               s.noise_kind, s.noise_variance, rounding_pieces=pieces)

    def _quantization_plan(self, layout: FieldLayout) -> QuantizationPlan:
        assert self.key is not None
        pieces = upload_chunk_count(self._upload_count, layout, self.key.slots, self._settings.chunk_ciphertexts)
        return plan_quantization(self._upload_count, self._settings.clip_norm, layout.bits, layout.max_participants,
                                 self._settings.min_participants, self._settings.noise_kind,
                                 self._settings.noise_variance, rounding_pieces=pieces)

    def _wait_for_nodes(self, stop: threading.Event) -> None:
        deadline = time.monotonic() + self._settings.join_timeout_seconds
        with self._subscribers_lock:
            while len(self._subscribers) < self._settings.expected_participants and not stop.is_set():
                if time.monotonic() > deadline:
                    if len(self._subscribers) >= self._settings.min_participants:
                        break
                    raise TimeoutError(f"only {len(self._subscribers)} nodes joined within the join timeout")
                self._subscribers_lock.wait(POLL_SECONDS)
        log.info("%d nodes connected; starting", len(self._subscribers))

    def _round_plan(self, round_id: int, quantization: QuantizationPlan, evaluate_only: bool,
                    model_sha256: bytes, model_chunks: int, statistics: bool) -> pb.RoundPlan:
        s, key = self._settings, self.key
        assert key is not None
        return pb.RoundPlan(
            round_id=round_id, secure=s.secure, evaluate_only=evaluate_only, key_id=key.key_id,
            head_statistics=statistics, upload_value_count=quantization.dimension,
            local_epochs=s.local_epochs,
            learning_rate=round_learning_rate(s.learning_rate, round_id, s.rounds, s.round_schedule, s.round_floor),
            batch_size=s.batch_size,
            local_optimizer=s.local_optimizer, proximal_mu=s.proximal_mu, drift_correction=s.drift_correction,
            clip_norm=quantization.clip_norm, scale=quantization.scale,
            coordinate_bound=quantization.coordinate_bound, bits=quantization.bits,
            fields_per_slot=1 if statistics else key.fields_per_slot, max_participants=key.max_participants,
            min_participants=quantization.min_participants, noise_kind=str(quantization.noise_kind),
            noise_variance=quantization.noise_variance, rounding_beta=quantization.rounding_beta,
            chunk_ciphertexts=s.chunk_ciphertexts,
            chunk_count=(quantization.rounding_pieces if s.secure
                         else chunk_count(quantization.dimension, s.plaintext_chunk_values)),
            parameter_count=self._spec.count, parameter_digest=self._spec.digest, model_sha256=model_sha256,
            model_chunk_count=model_chunks, deadline_seconds=s.round_deadline_seconds,
            plaintext_chunk_values=s.plaintext_chunk_values,
        )

    def _open_round(self, round_id: int, quantization: QuantizationPlan, evaluate_only: bool,
                    statistics: bool = False) -> RoundState:
        broadcast = self.weights if self.control is None else np.concatenate([self.weights, self.control])
        chunks = list(float32_chunks(broadcast, MODEL_CHUNK_VALUES))
        digest = hashlib.sha256(b"".join(chunks)).digest()
        plan = self._round_plan(round_id, quantization, evaluate_only, digest, len(chunks), statistics)
        with self._subscribers_lock:
            expected = set(self._subscribers)
        state = new_round_state(round_id, plan, expected, self._public_context, quantization.dimension)
        self._round = state
        self._metrics.current_round.set(round_id)
        log.info("round %d opened for %s%s", round_id, sorted(expected),
                 " (evaluation only)" if evaluate_only else " (head statistics)" if statistics else "")
        self._broadcast(pb.RoundMessage(plan=plan))
        for index, values in enumerate(chunks):
            self._broadcast(pb.RoundMessage(model_chunk=pb.ModelChunk(round_id=round_id, index=index, values=values)))
        self._metrics.bytes_sent.inc(len(expected) * sum(len(c) for c in chunks))
        if evaluate_only:
            self._wait_for_evaluations(round_id - 1, expected, time.monotonic() + self._settings.round_deadline_seconds)
        return state

    def _broadcast(self, message: pb.RoundMessage) -> None:
        with self._subscribers_lock:
            for subscriber in self._subscribers.values():
                subscriber.outbox.put(message)

    def _wait_for_evaluations(self, model_round: int, nodes: set[str], deadline: float) -> None:
        with self._evaluations_lock:
            while time.monotonic() < deadline:
                with self._subscribers_lock:
                    alive = nodes & set(self._subscribers)
                if alive <= set(self._evaluations.get(model_round, {})):
                    return
                self._evaluations_lock.wait(POLL_SECONDS)

    def _run_round(self, round_id: int, quantization: QuantizationPlan, stop: threading.Event) -> dict[str, object]:
        def apply(mean_upload: np.ndarray, participants: int) -> None:
            self.weights = self._optimizer.step(self.weights, mean_upload[: self._spec.count])
            if self.control is not None:
                # SCAFFOLD's server rule: c moves by the participants' share of the mean control variate change.
                self.control += participants / self._settings.expected_participants * mean_upload[self._spec.count :]

        return self._sealed_round(round_id, quantization, stop, apply)

    def _refit_head(self, round_id: int, stop: threading.Event) -> dict[str, object] | None:
        """The closing round: the hospitals' summed feature statistics, decrypted in the statistics layout, and the
        classifier head that linear discriminant analysis fits on them. None when the privacy budget refuses it."""
        quantization = self._statistics_plan()
        s = self._settings
        if s.secure:
            projected = self._accountant.epsilon_after(round_privacy(quantization, s.min_participants))
            if projected > s.epsilon_budget:
                self._metrics.record_refusal("privacy_budget")
                log.error("refusing the head refit: epsilon would reach %.4g, above the budget %.4g", projected,
                          s.epsilon_budget)
                return None

        def apply(mean_statistics: np.ndarray, participants: int) -> str | None:
            head = self._head
            moments = moments_from_statistics(mean_statistics * participants, head.num_classes, head.features)
            try:
                weight, bias = lda_head(moments, s.head_refit_shrinkage)
            except (ValueError, np.linalg.LinAlgError) as error:
                return f"no head refit: {error}"
            self.weights = head.install(self.weights, weight, bias)
            log.info("round %d: classifier head refit from %d hospitals' feature statistics", round_id, participants)
            return None

        row = self._sealed_round(round_id, quantization, stop, apply, statistics=True)
        row["head_refit"] = True
        return row

    def _sealed_round(self, round_id: int, quantization: QuantizationPlan, stop: threading.Event,
                      apply: Callable[[np.ndarray, int], str | None], statistics: bool = False
                      ) -> dict[str, object]:
        """Open the round, collect uploads to quorum or deadline, seal, decrypt, account for the release, `apply`
        the participants' mean upload and checkpoint: the round's row, marked failed when the quorum is missing, the
        sum was corrupted (nothing decrypted then) or `apply` returned a reason for leaving the model as it was."""
        started = time.monotonic()
        state = self._open_round(round_id, quantization, evaluate_only=False, statistics=statistics)
        deadline = started + self._settings.round_deadline_seconds
        with state.lock:
            while not state.complete() and time.monotonic() < deadline and not stop.is_set():
                state.changed.wait(POLL_SECONDS)
        contributors = state.seal()
        participants = len(contributors)
        row: dict[str, object] = {"round": round_id, "participants": participants,
                                  "contributors": [c.header.node_id for c in contributors],
                                  "learning_rate": state.plan.learning_rate}
        if participants < self._settings.min_participants or state.corrupted:
            log.error("round %d failed: %d participants (quorum %d)%s", round_id, participants,
                      self._settings.min_participants, ", sum corrupted" if state.corrupted else "")
            row.update(failed=True, seconds=time.monotonic() - started, epsilon=self._accountant.epsilon())
            return row
        decrypt_start = time.monotonic()
        mean_upload = self._mean_update(state, contributors, quantization)
        decrypt_seconds = time.monotonic() - decrypt_start
        if self._settings.secure:  # released once decrypted, whatever becomes of it
            self._accountant.step(round_privacy(quantization, participants))
        epsilon = self._accountant.epsilon() if self._settings.secure else math.inf
        apply_start = time.monotonic()
        refused = apply(mean_upload, participants)
        if refused is not None:
            log.error("round %d: %s; the model stays as it was", round_id, refused)
            row.update(failed=True, error=refused)
        save_checkpoint(self._state_dir / "checkpoints", round_id, self.weights, self._server_state(),
                        {"epsilon": epsilon, "rdp": self._accountant.rdp, "rounds": self._accountant.rounds})
        apply_seconds = time.monotonic() - apply_start
        seconds = time.monotonic() - started
        self._record_round_metrics(state, contributors, seconds, decrypt_seconds, apply_seconds, epsilon,
                                   quantization, participants)
        row.update(seconds=seconds, epsilon=epsilon, phases=self._phase_row(state, contributors, decrypt_seconds,
                                                                             apply_seconds))
        log.info("round %d sealed: %d participants, %.1f s, epsilon %.4g", round_id, participants, seconds, epsilon)
        return row

    def _mean_update(self, state: RoundState, contributors: list[VerifiedSubmission],
                     quantization: QuantizationPlan) -> np.ndarray:
        participants = len(contributors)
        if not state.plan.secure:
            assert state.plaintext_sum is not None
            return state.plaintext_sum / participants
        assert state.ciphertext_sum is not None
        total = state.ciphertext_sum
        manifest = pb.DecryptManifest(round_id=state.round_id, key_id=state.plan.key_id,
                                      chunk_count=total.chunk_count, value_count=quantization.dimension,
                                      attestations=[c.attestation for c in contributors],
                                      layout=sum_layout(state.plan))
        chunks = (pb.CiphertextChunk(index=i, ciphertexts=total.serialized_chunk(i))
                  for i in range(total.chunk_count))
        field_sums = self._key_authority.decrypt(manifest, chunks)
        if self._settings.record_sums:
            with atomic_writer(self._state_dir / f"round_{state.round_id:04d}_field_sum.npy") as handle:
                np.save(handle, field_sums)
            write_json_atomic(self._state_dir / f"round_{state.round_id:04d}_plan.json", {
                "scale": quantization.scale, "bits": quantization.bits, "participants": participants,
                "coordinate_bound": quantization.coordinate_bound,
                "noise_kind": str(quantization.noise_kind), "node_noise_variance": quantization.node_noise_variance,
                "contributors": [c.header.node_id for c in contributors]})
        return decode_mean_update(field_sums, quantization, participants)

    def _server_state(self) -> dict[str, np.ndarray]:
        state = self._optimizer.state()
        return state if self.control is None else {**state, "control": self.control}

    def _phase_row(self, state: RoundState, contributors: list[VerifiedSubmission], decrypt_seconds: float,
                   apply_seconds: float) -> dict[str, float]:
        def node_max(name: str) -> float:
            return max((getattr(c.phase_seconds, name) for c in contributors), default=0.0)

        return {"train": node_max("train"), "encode": node_max("encode"), "encrypt": node_max("encrypt"),
                "upload": node_max("upload"), "aggregate": state.fold_seconds, "decrypt": decrypt_seconds,
                "apply": apply_seconds}

    def _record_round_metrics(self, state: RoundState, contributors: list[VerifiedSubmission], seconds: float,
                              decrypt_seconds: float, apply_seconds: float, epsilon: float,
                              quantization: QuantizationPlan, participants: int) -> None:
        m = self._metrics
        m.round_latency.observe(seconds)
        for submission in contributors:
            for phase in ("train", "encode", "encrypt", "upload"):
                m.phase_seconds.labels(phase=phase).observe(getattr(submission.phase_seconds, phase))
        for phase, value in self._phase_row(state, contributors, decrypt_seconds, apply_seconds).items():
            m.last_phase_seconds.labels(phase=phase).set(value)
        for phase, value in (("aggregate", state.fold_seconds), ("decrypt", decrypt_seconds),
                             ("apply", apply_seconds)):
            m.phase_seconds.labels(phase=phase).observe(value)
        m.participants.set(participants)
        m.epsilon.set(epsilon)
        if self._settings.secure:
            m.round_epsilon.set(SkellamAccountant(self._settings.delta).epsilon_after(
                round_privacy(quantization, participants)))

    def _write_row(self, model_round: int, row: dict[str, object] | None) -> None:
        """Append the row of a finished round, with the pooled evaluation of its model."""
        with self._evaluations_lock:
            reports = list(self._evaluations.get(model_round, {}).values())
        pooled: PooledEvaluation | None = pool_reports(reports) if reports else None
        if pooled is not None:
            for name, value in pooled.as_dict().items():
                if isinstance(value, float):
                    self._metrics.validation.labels(metric=name).set(value)
            if pooled.calibrated is not None:
                self._metrics.validation.labels(metric="f1_calibrated").set(pooled.calibrated.metrics.f1)
                self._metrics.validation.labels(metric="threshold").set(pooled.calibrated.threshold)
            else:  # no operating point this round: drop last round's, never show it as current
                for name in ("f1_calibrated", "threshold"):
                    with contextlib.suppress(KeyError):
                        self._metrics.validation.remove(name)
        entry = dict(row or {"round": 0, "participants": 0, "seconds": 0.0, "epsilon": 0.0})
        entry["evaluation"] = pooled.as_dict() if pooled else None
        append_line_atomic(self._round_log, json.dumps(entry, default=_json_default))


def _json_default(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value)}")
