"""A hospital's participation: join, then for every round evaluate, train, encode and upload."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time

import grpc
import numpy as np
import torch

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from services.common.chunking import float32_from_chunks
from services.common.ckks_params import key_id as key_id_of
from services.common.ckks_params import load_public_context
from services.common.encryption_pool import EncryptionPool
from services.common.errors import MalformedChunkError, WrongKeyError
from services.common.head_refit import moments_of, penultimate_features, scaled_to, statistics_vector
from services.common.metrics import ServiceMetrics
from services.common.model_spec import flatten_named, flatten_state, parameter_spec, restore_state, upload_value_count
from services.common.models import best_device, build_model
from services.common.stream_digest import load_identity
from services.common.update_codec import received_update
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.local_data import LocalData
from services.hospital_node.trainer import LocalTraining, evaluation_report, loss_gradient, train_local
from services.hospital_node.update_stream import (
    CrashFault,
    UploadTimings,
    plaintext_upload,
    quantization_plan,
    require_signed_layout,
    secure_upload,
)

log = logging.getLogger(__name__)
CONNECT_ATTEMPTS = 120


class HospitalNode:
    def __init__(self, settings: HospitalNodeSettings, data: LocalData, metrics: ServiceMetrics,
                 aggregator: grpc.Channel, key_authority: grpc.Channel) -> None:
        self._settings = settings
        self._data = data
        self._metrics = metrics
        self._aggregator = pb_grpc.AggregatorStub(aggregator)
        self._key_authority = pb_grpc.KeyAuthorityStub(key_authority)
        self._model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
        self._spec = parameter_spec(self._model.state_dict())
        self._device = best_device()
        self._identity = load_identity(settings.identity_key)
        self._entropy = settings.seed if settings.seed is not None else secrets.randbits(128)
        self._pool: EncryptionPool | None = None
        # SCAFFOLD's c_i under drift correction: this hospital's loss gradient at the last global model it trained.
        self._control = np.zeros(self._spec.count)
        self._public: pb.PublicContext | None = None
        self._statistics_round: int | None = None  # the one round this node released its feature statistics in

    def run(self, stop: threading.Event) -> int:
        log.info("%s: %s on %s, %d parameters, %d train / %d validation images", self._settings.node_id,
                 self._settings.architecture, self._device, self._spec.count, self._data.train_labels.numel(),
                 self._data.val_labels.numel())
        try:
            self._public_context()  # fail fast if the key authority is unreachable or serves a secret key
            return self._follow_rounds(stop)
        finally:
            if self._pool is not None:
                self._pool.close()

    def _public_context(self) -> pb.PublicContext:
        if self._public is None:
            reply = self._key_authority.GetPublicContext(pb.GetPublicContextRequest(), timeout=60,
                                                         wait_for_ready=True)
            context = load_public_context(reply.context)  # refuses a context that carries a secret key
            self._metrics.secret_key.set(int(context.is_private()))
            if key_id_of(reply.context) != reply.key_id:
                raise WrongKeyError("the key authority's key id does not name its public context")
            self._public = reply
            self._pool = EncryptionPool(reply.context, self._settings.encryption_workers)
        return self._public

    def _follow_rounds(self, stop: threading.Event) -> int:
        join = pb.JoinRequest(node_id=self._settings.node_id, parameter_count=self._spec.count,
                              parameter_digest=self._spec.digest)
        stream = self._aggregator.Subscribe(join, wait_for_ready=True)
        plan: pb.RoundPlan | None = None
        model_chunks: list[bytes] = []
        for message in stream:
            if stop.is_set():
                stream.cancel()
                return 0
            kind = message.WhichOneof("body")
            if kind == "finished":
                log.info("training finished after %d rounds", message.finished.rounds)
                return 0
            if kind == "plan":
                plan, model_chunks = message.plan, []
                continue
            if plan is None or message.model_chunk.round_id != plan.round_id:
                raise MalformedChunkError("model chunk without a matching plan")
            model_chunks.append(message.model_chunk.values)
            if len(model_chunks) == plan.model_chunk_count:
                self._handle_round(plan, model_chunks)
        return 0

    def _handle_round(self, plan: pb.RoundPlan, model_chunks: list[bytes]) -> None:
        started = time.monotonic()
        if hashlib.sha256(b"".join(model_chunks)).digest() != plan.model_sha256:
            raise MalformedChunkError(f"global model of round {plan.round_id} does not match its digest")
        if plan.parameter_count != self._spec.count or plan.parameter_digest != self._spec.digest:
            raise MalformedChunkError("round plan is for another model layout")
        received = float32_from_chunks(model_chunks, upload_value_count(self._spec.count, plan.drift_correction))
        global_weights, consortium_control = received[: self._spec.count], received[self._spec.count :]
        # The node's own BatchNorm statistics stay; only the aggregated weights are replaced.
        self._model.load_state_dict(restore_state(self._model.state_dict(), global_weights, self._spec))
        self._report_evaluation(plan.round_id - 1)
        if plan.evaluate_only:
            return
        self._metrics.current_round.set(plan.round_id)
        if plan.head_statistics:
            if self._statistics_round is not None:
                log.error("round %d asks for feature statistics again (sent in round %d): refused, nothing sent",
                          plan.round_id, self._statistics_round)
                return
            self._statistics_round = plan.round_id
            self._upload_statistics(plan)
            return
        generator = torch.Generator().manual_seed(hash((self._entropy, plan.round_id)) & 0x7FFFFFFF)
        train_start = time.monotonic()
        config = LocalTraining(plan.local_epochs, plan.learning_rate, plan.batch_size,
                               "adamw" if plan.local_optimizer == "adamw" else "sgd", plan.proximal_mu,
                               self._settings.imbalance, self._settings.lr_schedule, self._settings.augment)
        drift, change = None, None
        if plan.drift_correction:
            # SCAFFOLD, option I: c_i moves to the loss gradient at the global model, taken before any local step.
            gradient = flatten_named(loss_gradient(self._model, self._data, config, self._device), self._spec)
            change = gradient - self._control
            drift = restore_state(self._model.state_dict(), (consortium_control - self._control).astype(np.float32),
                                  self._spec)
        stats = train_local(self._model, self._data, config, self._device, generator, drift)
        timings = UploadTimings(train=time.monotonic() - train_start)
        self._metrics.observe_phase("train", timings.train)
        update = flatten_state({k: v.cpu() for k, v in self._model.state_dict().items()}) - global_weights
        log.info("round %d: trained %d steps, loss %.4f, update norm %.4g", plan.round_id, stats.steps,
                 stats.mean_loss, float(np.linalg.norm(update)))
        if change is not None:
            upload = np.concatenate([update, change])
            self._upload(plan, upload, timings)
            # c_i moves by what the consortium's sum received of the change (clipped and clamped in secure mode),
            # so that c stays the mean of the c_i: a clamped c against exact c_i would add their gap to every
            # hospital's every step.
            received = received_update(upload, quantization_plan(plan)) if plan.secure else upload
            self._control = self._control + received[self._spec.count :]
        else:
            self._upload(plan, update, timings)
        log.info("round %d done in %.1f s", plan.round_id, time.monotonic() - started)

    def _upload_statistics(self, plan: pb.RoundPlan) -> None:
        """The head refit's round: this model's feature statistics on the training images, scaled to the clip norm
        (the scale weighs only this hospital's images: its counts ride in the same vector)."""
        started = time.monotonic()
        features = penultimate_features(self._model, self._data.train_images, self._device)
        moments = moments_of(features, self._data.train_labels, self._settings.num_classes)
        vector = statistics_vector(moments)
        if vector.size != plan.upload_value_count:
            raise MalformedChunkError(f"round {plan.round_id} expects {plan.upload_value_count} statistics values; "
                                      f"this model's head gives {vector.size}")
        timings = UploadTimings(train=time.monotonic() - started)  # the feature pass is this round's local work
        self._metrics.observe_phase("train", timings.train)
        log.info("round %d: feature statistics of %d images (%d values)", plan.round_id, features.shape[0],
                 vector.size)
        self._upload(plan, scaled_to(vector, plan.clip_norm), timings)

    def _upload(self, plan: pb.RoundPlan, update: np.ndarray, timings: UploadTimings) -> None:
        s = self._settings
        fault = CrashFault(s.fault_exit_after_chunks) if (s.fault_exit_after_chunks is not None
                                                         and plan.round_id == s.fault_round) else None
        record: list[np.ndarray] | None = [] if s.record_dir is not None else None
        if plan.secure:
            public = self._public_context()
            if plan.key_id != public.key_id:
                raise WrongKeyError(f"round {plan.round_id} names key {plan.key_id!r}; "
                                    f"the key authority serves {public.key_id!r}")
            require_signed_layout(plan, public)
            assert self._pool is not None
            seed = np.random.SeedSequence(self._entropy, spawn_key=(plan.round_id,))
            chunks = secure_upload(plan, update, s.node_id, self._identity, self._pool,
                                   public.slots_per_ciphertext, timings, seed, record, fault)
        else:
            chunks = plaintext_upload(plan, update, s.node_id, self._identity, timings, fault)
        counted = self._count_bytes(chunks)
        receipt = self._aggregator.SubmitUpdate(counted, timeout=plan.deadline_seconds)
        phases = timings.phases()
        for phase in ("encode", "encrypt", "upload"):
            self._metrics.observe_phase(phase, getattr(phases, phase))
        log.info("round %d: upload accepted (%d chunks)", receipt.round_id, receipt.chunks)
        if s.record_dir is not None:
            s.record_dir.mkdir(parents=True, exist_ok=True)
            np.save(s.record_dir / f"{s.node_id}_round{plan.round_id:04d}_update.npy", update)
            if record:
                np.save(s.record_dir / f"{s.node_id}_round{plan.round_id:04d}_fields.npy",
                        np.concatenate(record).astype(np.int64))

    def _count_bytes(self, chunks):  # type: ignore[no-untyped-def]
        for chunk in chunks:
            self._metrics.bytes_sent.inc(sum(len(c) for c in chunk.ciphertexts) + len(chunk.plaintext_values))
            yield chunk

    def _report_evaluation(self, model_round: int) -> None:
        report, counts = evaluation_report(self._model, self._data, self._device, self._settings.node_id,
                                           model_round)
        self._aggregator.ReportEvaluation(report, timeout=60)
        accuracy = np.trace(counts.confusion) / max(counts.examples, 1)
        log.info("model after round %d: local validation accuracy %.3f on %d images", model_round, accuracy,
                 counts.examples)
