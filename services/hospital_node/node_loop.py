"""A hospital's participation: join, then for every round evaluate, train, encode and upload."""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Protocol, TypeVar

import grpc
import numpy as np
import torch

from services.common.errors import FedXrayError, MalformedChunkError, PlanRefusedError, WrongKeyError
from services.common.ml.choices import Trainable
from services.common.ml.classification_metrics import HISTOGRAM_BINS
from services.common.ml.evaluation_report import EvaluationReport, MaskedEvaluationReport
from services.common.ml.head_refit import statistics_dimension
from services.common.ml.model_spec import parameter_spec, restore_state
from services.common.ml.models import best_device, build_model
from services.common.ml.trainable import classifier_head, trained_positions
from services.common.protocol.chunking import float32_from_chunks
from services.common.protocol.class_roster import ClassRoster, default_class_names
from services.common.protocol.node_identity import NodeKeyRegistry, load_agreement_key, load_identity
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundDecline, RoundKind, RoundPlan
from services.common.protocol.upload import UploadChunk
from services.common.runtime.cpu import usable_cores
from services.common.runtime.metrics import ServiceMetrics
from services.common.runtime.retry import RetryPolicy, retry_call
from services.common.secure_sum.ckks_params import key_id as key_id_of
from services.common.secure_sum.ckks_params import load_public_context
from services.common.secure_sum.masked_evaluation import EVALUATION_DOMAIN, evaluation_scope, mask_report
from services.common.secure_sum.pairwise_masks import MaskScope, participant_set_hash, peer_masks
from services.common.secure_sum.pooled_counts import COUNTS_DOMAIN, CountsRelease, masked_counts
from services.common.secure_sum.update_codec import received_update
from services.hospital_node.admission import Admission, AdmissionGate, RecordPrivacy
from services.hospital_node.config import FloorSettings, HospitalNodeSettings, TrainingSettings
from services.hospital_node.connection import follow_rounds
from services.hospital_node.consortium_client import ConsortiumClient, UnreachableError, wait_until_reachable
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.encryption_pool import EncryptionPool, UploadRecipe
from services.hospital_node.evaluation_ledger import EvaluationLedger
from services.hospital_node.local_round import ScaffoldClient, head_statistics, local_training, train_round
from services.hospital_node.private_training import PrivateTraining
from services.hospital_node.record_privacy import RecordBudget, poisson_schedule
from services.hospital_node.trainer import evaluation_report
from services.hospital_node.update_stream import (
    Disclosures,
    UploadTimings,
    assemble_upload,
    attempt_scope,
    masked_recipe,
)
from services.hospital_node.upload_ledger import UploadLedger

log = logging.getLogger(__name__)



def precompute_pays(device: str, cpu_cores: float | None, torch_threads: int, encryption_workers: int) -> bool:
    """`precompute_encryption=auto`: whether drawing a round's noise, masks and encryptions of zero while training
    shortens the round. It needs an encryption worker; on CUDA the CPU cores it uses are otherwise idle; on a CPU it
    pays only where the training threads and the workers each have a core (docs/BENCHMARKS.md, "Where the precompute
    pays": with fewer, the precompute slows training by more than it takes off the upload). Torch's default threads
    (0) take every core."""
    if encryption_workers < 1:
        return False
    if device == "cuda":
        return True
    cores = cpu_cores if cpu_cores is not None else usable_cores()
    return cores >= (torch_threads or cores) + encryption_workers

class UploadObserver(Protocol):
    """A test's window on the uploads (tests/service_hooks); production nodes have none."""

    keeps_fields: bool

    def chunk_sent(self, node_id: str, round_id: int, sent: int) -> None: ...

    def uploaded(self, node_id: str, round_id: int, update: np.ndarray, fields: np.ndarray | None) -> None: ...


class HospitalNode:
    def __init__(self, settings: HospitalNodeSettings, data: LocalData, metrics: ServiceMetrics,
                 *, client: ConsortiumClient, observer: UploadObserver | None = None) -> None:
        self._settings = settings
        self._data = data
        names = data.classes.names if data.classes else default_class_names(settings.num_classes)
        counts = data.classes.counts if data.classes and settings.share_class_counts else ()
        self._classes = ClassRoster(names, counts)  # sent when joining: the aggregator checks the names
        self._metrics = metrics
        self._client = client
        self._observer = observer
        self._model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
        self._spec = parameter_spec(self._model.state_dict())
        self._counts_release = CountsRelease(settings.state_dir / "pooled_class_counts_sent.json")
        self._training = TrainingSettings.of(settings)
        self._privacy = RecordPrivacy(self._training, self._model, data.train_labels.numel())
        self._publish_record_epsilon()
        if settings.record_dp == "off":
            log.warning("record-level DP-SGD is OFF by this hospital's setting (record_dp=off)%s: its updates are "
                        "protected by the secure sum's hospital-level noise only, and the round rows list it among "
                        "the hospitals training without DP-SGD",
                        "; it keeps the ledger it already holds" if self._budget is not None else "")
        self._device = best_device()
        self._identity = load_identity(settings.identity_key)
        self._agreement = load_agreement_key(settings.identity_key)
        self._peers = NodeKeyRegistry.from_directory(settings.peer_keys_dir or settings.identity_key.parent)
        # Training randomness only: a secure upload's noise and masks always come from the OS's entropy.
        self._entropy = settings.seed if settings.seed is not None else secrets.randbits(128)
        self._pool: EncryptionPool | None = None
        self._scaffold = ScaffoldClient(self._spec.count)
        self._public: PublicKeyInfo | None = None
        # The attempts joined by round, and the one round this node released its feature statistics in: on disk, so
        # that a restart can never be made to upload twice under one attempt's masks.
        self._joined = UploadLedger(settings.state_dir / "uploads.json")
        self._gate = AdmissionGate(FloorSettings.of(settings), self._spec, self._peers, joined=self._joined,
                                   privacy=self._privacy)
        self._reported: set[int] = set()  # model rounds this node has reported its evaluation of
        self._reports_by_model: dict[bytes, EvaluationReport] = {}  # plaintext runs: each model's report, by digest
        self._evaluations = EvaluationLedger(settings.state_dir / "evaluations.json")  # secure runs
        self._said_too_few = False
        self._statistics_dimension = statistics_dimension(settings.num_classes,
                                                          classifier_head(self._model).in_features)
        self._trained: tuple[int, np.ndarray] | None = None  # this round's upload, re-encoded for a new attempt
        self._trained_positions: dict[str, np.ndarray] = {}
        self._scope: tuple[RoundPlan, MaskScope] | None = None  # this attempt's mask scope, made once
        self._accepted_round: int | None = None  # the last round SCAFFOLD's c_i moved in

    def run(self, stop: threading.Event) -> int:
        log.info("%s: %s on %s, %d parameters, %d train / %d validation images", self._settings.node_id,
                 self._settings.architecture, self._device, self._spec.count, self._data.train_labels.numel(),
                 self._data.val_labels.numel())
        try:
            settings = self._settings
            for peer, address, probe in (("key authority", settings.key_authority, self._client.probe_key_authority),
                                         ("aggregator", settings.aggregator, self._client.probe_aggregator)):
                wait_until_reachable(peer, address, probe, tls=settings, seconds=settings.connect_seconds, log=log)
            self._public_key()  # fail fast if the key authority serves a secret key
            return follow_rounds(self._client, settings.node_id, self._spec,
                                 reconnect_seconds=settings.reconnect_seconds, classes=self._classes, stop=stop,
                                 handle=self._take_part)
        except UnreachableError as unreachable:
            log.error("%s", unreachable)
            return 1
        finally:
            if self._pool is not None:
                self._pool.close()

    def _public_key(self) -> PublicKeyInfo:
        if self._public is None:
            public = self._client.public_key()
            context = load_public_context(public.context)  # refuses a context that carries a secret key
            self._metrics.secret_key.set(int(context.is_private()))
            if key_id_of(public.context) != public.key_id:
                raise WrongKeyError("the key authority's key id does not name its public context")
            self._public = public
            self._pool = EncryptionPool(public.context, self._settings.encryption_workers)
        return self._public

    def _take_part(self, plan: RoundPlan, model_chunks: list[bytes]) -> None:
        """One round attempt; whatever goes wrong in it (a malformed plan, a failed upload) ends this attempt's part
        only, declined by name where the aggregator should know, and the node waits for the next plan."""
        try:
            self._handle_round(plan, model_chunks)
        except PlanRefusedError as refused:
            self._decline(plan, refused.reason, str(refused))
        except (FedXrayError, ValueError, KeyError) as error:
            log.exception("round %d attempt %d: cannot take part", plan.round_id, plan.attempt)
            self._decline(plan, "malformed_plan", f"round {plan.round_id} attempt {plan.attempt}: {error}")
        except grpc.RpcError as error:  # a report or a call the aggregator did not take: this attempt only
            log.warning("round %d attempt %d: the aggregator did not answer (%s: %s); waiting for the next plan",
                        plan.round_id, plan.attempt, error.code().name, error.details())

    def _decline(self, plan: RoundPlan, reason: str, detail: str) -> None:
        log.error("declining round %d attempt %d (%s): %s", plan.round_id, plan.attempt, reason, detail)
        try:
            _patiently(lambda: self._client.decline(RoundDecline(self._settings.node_id, plan.round_id, plan.attempt,
                                                                 reason, detail)))
        except grpc.RpcError as error:
            log.warning("the aggregator did not take the decline (%s)", error.code())

    def _handle_round(self, plan: RoundPlan, model_chunks: list[bytes]) -> None:
        started = time.monotonic()
        if plan.kind is not RoundKind.EVALUATE:
            self._metrics.current_round.set(plan.round_id)
        expected = (self._statistics_dimension if plan.kind is RoundKind.HEAD_STATISTICS
                    else self._positions(plan.training.trainable).size * (2 if plan.training.drift_correction else 1))
        admission = self._gate.admit(plan, model_chunks, self._public_key() if plan.secure else None, expected)
        if admission is Admission.WAIT:
            return
        count = self._spec.count
        received = float32_from_chunks(model_chunks, count * (2 if plan.training.drift_correction else 1))
        global_weights, consortium_control = received[:count], received[count:]
        # The node's own BatchNorm statistics stay; only the aggregated weights are replaced.
        self._model.load_state_dict(restore_state(self._model.state_dict(), global_weights, self._spec))
        # Counts of the model only for a plan this hospital takes part in, once per model: never an open oracle.
        self._report_once(plan.round_id - 1, plan)
        if admission is Admission.EVALUATE:
            return
        if plan.kind is RoundKind.HEAD_STATISTICS:
            self._upload_statistics(plan)
            return
        scaffold = self._scaffold if plan.training.drift_correction else None
        recipe = None
        if self._trained is None or self._trained[0] != plan.round_id:
            recipe = self._precompute(plan, expected)
            timings = self._train(plan, global_weights, consortium_control, scaffold)
        else:  # a new attempt of a round already trained: the same update, with fresh noise and new masks
            timings = UploadTimings()
        assert self._trained is not None
        upload = self._trained[1]
        if recipe is not None and self._pool is not None:
            timings.precompute = self._pool.precompute_seconds()
            self._metrics.observe_phase("precompute", timings.precompute)
        if self._upload(plan, upload, timings, recipe) and scaffold is not None and self._accepted_round != plan.round_id:
            self._accepted_round = plan.round_id  # c_i moves once per round, by what the sum received
            sent = received_update(upload, plan.quantization) if plan.secure else upload
            scaffold.accept(sent[count:])
        log.info("round %d attempt %d done in %.1f s", plan.round_id, plan.attempt, time.monotonic() - started)

    def _positions(self, trainable: Trainable) -> np.ndarray:
        """Where the plan's trained parameters lie in the flat weights: what this node uploads."""
        if trainable not in self._trained_positions:
            self._trained_positions[trainable] = trained_positions(self._model, self._spec, trainable)
        return self._trained_positions[trainable]

    def _precompute(self, plan: RoundPlan, dimension: int) -> UploadRecipe | None:
        """Start drawing the round attempt's noise and masks and making its encryptions of zero on the encryption
        workers, to run while this node trains (`precompute_encryption`); the recipe the upload then uses, or None."""
        setting = self._settings.precompute_encryption
        if not plan.secure or setting == "off" or (setting == "auto" and not precompute_pays(
                self._device.type, self._settings.cpu_cores, self._settings.torch_threads,
                self._settings.encryption_workers)):
            return None
        assert self._pool is not None
        recipe = self._recipe(plan, f"{plan.round_id}:{plan.attempt}")
        if not self._pool.precompute(dimension, recipe):
            log.warning("precompute_encryption=%s needs encryption_workers >= 1; encrypting after training", setting)
            return None
        log.info("round %d attempt %d: drawing noise and masks and encrypting zeros while training", plan.round_id,
                 plan.attempt)
        return recipe

    def _attempt_scope(self, plan: RoundPlan) -> MaskScope:
        """What this attempt's masks (the update's and the counts') are bound to, made once per plan received."""
        if self._scope is None or self._scope[0] is not plan:
            self._scope = (plan, attempt_scope(self._settings.consortium, plan))
        return self._scope[1]

    def _recipe(self, plan: RoundPlan, tag: str | None = None) -> UploadRecipe:
        """A secure upload's recipe for this attempt (`masked_recipe`)."""
        s = self._settings
        return masked_recipe(plan, s.node_id, self._agreement, peers=self._peers.agreement_keys,
                             public=self._public_key(),
                             scope=self._attempt_scope(plan), tag=tag)

    def _masked_counts(self, plan: RoundPlan) -> tuple[int, ...]:
        """This hospital's class counts masked for the attempt's participant set (pooled by the aggregator over the
        whole set, `services.common.secure_sum.pooled_counts`): none under record-level DP-SGD, none for a set short
        of the whole consortium, and none for a second set or other counts."""
        counts = self._data.classes.counts if self._data.classes else ()
        consortium = self._peers.node_ids | {self._settings.node_id}
        if not counts or self._budget is not None or not self._counts_release.allows(plan.participants, counts,
                                                                                    consortium):
            return ()
        s = self._settings
        return masked_counts(counts, peer_masks(s.node_id, self._agreement, self._peers.agreement_keys,
                                                scope=self._attempt_scope(plan), domain=COUNTS_DOMAIN))

    @property
    def _budget(self) -> RecordBudget | None:
        return self._privacy.budget

    def _publish_record_epsilon(self) -> None:
        if self._budget is not None:
            self._metrics.record_epsilon.labels(node=self._settings.node_id).set(self._budget.epsilon())

    def _train(self, plan: RoundPlan, global_weights: np.ndarray, consortium_control: np.ndarray,
               scaffold: ScaffoldClient | None) -> UploadTimings:
        generator = torch.Generator().manual_seed(hash((self._entropy, plan.round_id)) & 0x7FFFFFFF)
        config = local_training(plan.training, self._training)
        trainable = plan.training.trainable
        private, charge = None, None
        if self._budget is not None:
            t = self._training
            # Patients are the unit where this hospital knows them (user-level DP-SGD in every mode); else images.
            units, unit = self._data.unit_count, self._data.privacy_unit
            sample_rate, per_epoch = poisson_schedule(units, config.batch_size)
            charge = (sample_rate, per_epoch * config.epochs)
            sigma = self._budget.admit(plan.round_id, *charge, unit)  # a refusal trains nothing and spends nothing
            private = PrivateTraining(sigma, t.dp_clip_norm, t.dp_grad_sample_mode, t.dp_physical_batch, trainable)
        train_start = time.monotonic()
        local = {name: tensor.detach().clone() for name, tensor in self._model.state_dict().items()}
        result = train_round(self._model, self._data, config, device=self._device, generator=generator, spec=self._spec,
                             global_weights=global_weights, scaffold=scaffold, consortium_control=consortium_control,
                             private=private, trainable=trainable, positions=self._positions(trainable))
        if not (np.isfinite(result.upload).all() and all(bool(torch.isfinite(t).all())
                                                         for t in self._model.state_dict().values()
                                                         if t.is_floating_point())):
            # Never keep poisoned local state (BatchNorm statistics above all): the model as it was, and a named
            # decline. A DP charge already spent stays spent: the ledger only grows.
            self._model.load_state_dict(local)
            raise PlanRefusedError("training_not_finite", f"round {plan.round_id}: local training at learning rate "
                                   f"{plan.training.learning_rate:g} produced values that are not finite; the local "
                                   "state is restored and nothing is uploaded")
        if self._budget is not None and charge is not None:
            spent = self._budget.spend(plan.round_id, *charge)  # on disk before the update can leave
            self._publish_record_epsilon()
            log.info("round %d: record-level epsilon spent %.4g of %g per %s (delta %g, noise multiplier %.4f; RDP "
                     "bound %.4g)", plan.round_id, spent.epsilon, self._budget.target.epsilon, spent.unit, spent.delta,
                     spent.noise_multiplier, spent.rdp_epsilon)
        timings = UploadTimings(train=time.monotonic() - train_start)
        self._metrics.observe_phase("train", timings.train)
        log.info("round %d: trained %s, %d steps, loss %.4f, update norm %.4g (%d values uploaded)", plan.round_id,
                 trainable, result.stats.steps, result.stats.mean_loss, float(np.linalg.norm(result.upload)),
                 result.upload.size)
        self._trained = (plan.round_id, result.upload)
        return timings

    def _upload_statistics(self, plan: RoundPlan) -> None:
        released = self._joined.statistics_round(plan.key_id)
        if released not in (None, plan.round_id):
            log.error("round %d asks for feature statistics again (sent in round %d): refused, nothing sent",
                      plan.round_id, released)
            return
        self._joined.release_statistics(plan.key_id, plan.round_id)
        started = time.monotonic()
        vector = head_statistics(self._model, self._data, self._device, plan.quantization.clip_norm)
        if vector.size != plan.upload_value_count:
            raise MalformedChunkError(f"round {plan.round_id} expects {plan.upload_value_count} statistics values; "
                                      f"this model's head gives {vector.size}")
        timings = UploadTimings(train=time.monotonic() - started)  # the feature pass is this round's local work
        self._metrics.observe_phase("train", timings.train)
        log.info("round %d: feature statistics of %d images (%d values)", plan.round_id,
                 self._data.train_labels.numel(), vector.size)
        self._upload(plan, vector, timings)

    def _upload(self, plan: RoundPlan, update: np.ndarray, timings: UploadTimings,
                recipe: UploadRecipe | None = None) -> bool:
        """Encode and stream one upload; whether the aggregator accepted it (a refused one is logged, and the node
        waits for the next plan)."""
        s, observer = self._settings, self._observer
        chunk_sent = ((lambda sent: observer.chunk_sent(s.node_id, plan.round_id, sent)) if observer is not None
                      else None)
        record: list[np.ndarray] | None = [] if observer is not None and observer.keeps_fields else None
        # What the last chunk states beside the payload; the attestation signs it with the rest.
        disclosures = Disclosures(self._budget.spent() if self._budget is not None else None,
                                  self._masked_counts(plan) if plan.secure else ())
        if plan.secure:
            assert plan.key_id == self._public_key().key_id  # the privacy floor checked it
            recipe = recipe if recipe is not None else self._recipe(plan)
        chunks = assemble_upload(plan, update, s.node_id, key=self._identity, disclosures=disclosures, timings=timings,
                                 pool=self._pool, recipe=recipe, record=record, chunk_sent=chunk_sent,
                                 plan_sha256=self._attempt_scope(plan).plan_digest)
        try:
            stream = _Started(self._count_bytes(chunks))
            # A call refused before it took a chunk (the server's call limit, during a member's flood) is tried
            # again with the same, untouched chunks; one that took any is not.
            receipt = _patiently(lambda: self._client.submit(stream, timeout=plan.transfer.deadline_seconds),
                                 lambda: not stream.started)
        except grpc.RpcError as error:
            log.warning("round %d attempt %d: upload refused (%s: %s)", plan.round_id, plan.attempt, error.code(),
                        error.details())
            return False
        phases = timings.phases()
        for phase in ("encode", "encrypt", "upload"):
            self._metrics.observe_phase(phase, getattr(phases, phase))
        log.info("round %d: upload accepted (%d chunks)", receipt.round_id, receipt.chunks)
        if observer is not None:
            fields = np.concatenate(record).astype(np.int64) if record else None
            observer.uploaded(s.node_id, plan.round_id, update, fields)
        return True

    def _count_bytes(self, chunks: Iterator[UploadChunk]) -> Iterator[UploadChunk]:
        for chunk in chunks:
            self._metrics.bytes_sent.inc(sum(len(c) for c in chunk.ciphertexts) + len(chunk.plaintext_values))
            yield chunk

    def _report_once(self, model_round: int, plan: RoundPlan) -> None:
        """One evaluation per model: a model sent again under another round id (a round whose sum failed leaves it
        as it was) gets the counts it already got, under the new round id, so that nothing new leaves the hospital
        and no round waits for its report. In a secure plan the counts go masked for the plan's participant set, and
        a model is answered for one set only (`EvaluationLedger`)."""
        if model_round in self._reported:
            return
        self._reported.add(model_round)
        model_digest = plan.model.sha256
        if plan.secure:
            self._report_masked(model_round, plan)
            return
        earlier = self._reports_by_model.get(model_digest)
        if earlier is not None:
            self._send_report(replace(earlier, model_round=model_round))
            return
        report = self._evaluate(model_round)
        self._send_report(report)
        self._reports_by_model[model_digest] = report

    def _report_masked(self, model_round: int, plan: RoundPlan) -> None:
        s, key_id, members = self._settings, self._public_key().key_id, tuple(sorted(plan.participants))
        answered = self._evaluations.answered_set(key_id)
        sent = self._evaluations.sent(key_id, plan.model.sha256)
        withheld = ("this hospital answers evaluations under this key for one participant set only, the one it "
                    "answered first (two pooled sums over different sets would give one hospital's counts by their "
                    "difference)" if answered is not None and answered != participant_set_hash(members)
                    else "its model was evaluated before and the masked values sent then are no longer kept (one "
                    "masked vector per model)" if sent is True else None)
        if withheld is not None:
            detail = f"no evaluation report on round {plan.round_id}'s plan for {list(members)}: {withheld}"
            if plan.kind is RoundKind.EVALUATE:  # declined by name, so that the aggregator does not wait for it
                raise PlanRefusedError("evaluation_withheld", detail)
            log.warning("%s", detail)
            return
        if isinstance(sent, tuple):  # the model again, under another round id: the very values sent before
            self._send_report(MaskedEvaluationReport(s.node_id, model_round, s.num_classes, HISTOGRAM_BINS, members,
                                                     sent))
            return
        report = self._evaluate(model_round)
        scope = evaluation_scope(s.consortium, key_id, members, plan.model.sha256)
        values = mask_report(report, peer_masks(s.node_id, self._agreement, self._peers.agreement_keys, scope=scope,
                                                domain=EVALUATION_DOMAIN))
        self._evaluations.record(key_id, plan.model.sha256, members, values)  # on disk before anything leaves
        self._send_report(MaskedEvaluationReport(s.node_id, model_round, s.num_classes, HISTOGRAM_BINS, members,
                                                 values))
        if s.share_evaluation:  # this hospital's own figures, by its choice
            self._send_report(report)

    def _send_report(self, report: EvaluationReport | MaskedEvaluationReport) -> None:
        """A report is informational: one the aggregator does not take (after a few tries) is logged, and the round
        attempt goes on."""
        try:
            _patiently(lambda: self._client.report(report))
        except grpc.RpcError as error:
            log.warning("the aggregator did not take the evaluation of round %d's model (%s: %s)", report.model_round,
                        error.code().name, error.details())

    def _evaluate(self, model_round: int) -> EvaluationReport:
        if self._data.val_labels.numel() < self._settings.min_validation_images and not self._said_too_few:
            log.warning("%d validation images, below min_validation_images=%d: this hospital sends empty evaluation "
                        "reports, so that nobody waits for it and nothing about its images leaves it",
                        self._data.val_labels.numel(), self._settings.min_validation_images)
            self._said_too_few = True
        report = evaluation_report(self._model, self._data, self._device, node_id=self._settings.node_id,
                                   model_round=model_round,
                                   min_images=self._settings.min_validation_images)
        counts = report.counts
        accuracy = np.trace(counts.confusion) / max(counts.examples, 1)
        log.info("model after round %d: local validation accuracy %.3f on %d images", model_round, accuracy,
                 counts.examples)
        return report


# Statuses of a call the server could not take just now: tried again, a few times, after 1 and 2 seconds.
TRANSIENT_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
PATIENTLY = RetryPolicy(TRANSIENT_CODES, tries=3, first_pause=1.0, max_pause=2.0)
T = TypeVar("T")


def _patiently(call: Callable[[], T], may_retry: Callable[[], bool] = lambda: True) -> T:
    return retry_call(call, PATIENTLY, "the aggregator could not take a call", log=log,
                      may_retry=lambda error: may_retry())


class _Started(Iterator[UploadChunk]):
    """An upload's chunks that say whether the call took any yet."""

    def __init__(self, chunks: Iterator[UploadChunk]) -> None:
        self._chunks = chunks
        self.started = False

    def __iter__(self) -> _Started:
        return self

    def __next__(self) -> UploadChunk:
        self.started = True
        return next(self._chunks)
