"""A hospital's participation: join, then for every round evaluate, train, encode and upload."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Protocol

import numpy as np
import torch

from services.common.chunking import float32_from_chunks
from services.common.ckks_params import key_id as key_id_of
from services.common.ckks_params import load_public_context
from services.common.errors import MalformedChunkError, WrongKeyError
from services.common.metrics import ServiceMetrics
from services.common.model_spec import parameter_spec, restore_state
from services.common.models import best_device, build_model
from services.common.public_key import PublicKeyInfo
from services.common.round_plan import ModelChunk, RoundKind, RoundPlan, TrainingFinished
from services.common.stream_digest import load_identity
from services.common.update_codec import received_update
from services.common.upload import UploadChunk
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.consortium_client import ConsortiumClient
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.encryption_pool import EncryptionPool
from services.hospital_node.local_round import ScaffoldClient, head_statistics, local_training, train_round
from services.hospital_node.trainer import evaluation_report
from services.hospital_node.update_stream import (
    UploadTimings,
    plaintext_upload,
    require_signed_layout,
    secure_upload,
)

log = logging.getLogger(__name__)


class UploadObserver(Protocol):
    """A test's window on the uploads (tests/service_hooks); production nodes have none."""

    keeps_fields: bool

    def chunk_sent(self, node_id: str, round_id: int, sent: int) -> None: ...

    def uploaded(self, node_id: str, round_id: int, update: np.ndarray, fields: np.ndarray | None) -> None: ...


class HospitalNode:
    def __init__(self, settings: HospitalNodeSettings, data: LocalData, metrics: ServiceMetrics,
                 client: ConsortiumClient, observer: UploadObserver | None = None) -> None:
        self._settings = settings
        self._data = data
        self._metrics = metrics
        self._client = client
        self._observer = observer
        self._model = build_model(settings.architecture, settings.num_classes, settings.model_seed)
        self._spec = parameter_spec(self._model.state_dict())
        self._device = best_device()
        self._identity = load_identity(settings.identity_key)
        self._entropy = settings.seed if settings.seed is not None else secrets.randbits(128)
        self._pool: EncryptionPool | None = None
        self._scaffold = ScaffoldClient(self._spec.count)
        self._public: PublicKeyInfo | None = None
        self._statistics_round: int | None = None  # the one round this node released its feature statistics in

    def run(self, stop: threading.Event) -> int:
        log.info("%s: %s on %s, %d parameters, %d train / %d validation images", self._settings.node_id,
                 self._settings.architecture, self._device, self._spec.count, self._data.train_labels.numel(),
                 self._data.val_labels.numel())
        try:
            self._public_key()  # fail fast if the key authority is unreachable or serves a secret key
            return self._follow_rounds(stop)
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

    def _follow_rounds(self, stop: threading.Event) -> int:
        subscription = self._client.subscribe(self._settings.node_id, self._spec)
        plan: RoundPlan | None = None
        model_chunks: list[bytes] = []
        for message in subscription:
            if stop.is_set():
                subscription.cancel()
                return 0
            if isinstance(message, TrainingFinished):
                log.info("training finished after %d rounds", message.rounds)
                return 0
            if isinstance(message, RoundPlan):
                plan, model_chunks = message, []
                continue
            assert isinstance(message, ModelChunk)
            if plan is None or message.round_id != plan.round_id:
                raise MalformedChunkError("model chunk without a matching plan")
            model_chunks.append(message.values)
            if len(model_chunks) == plan.model.chunk_count:
                self._handle_round(plan, model_chunks)
        return 0

    def _handle_round(self, plan: RoundPlan, model_chunks: list[bytes]) -> None:
        started = time.monotonic()
        if hashlib.sha256(b"".join(model_chunks)).digest() != plan.model.sha256:
            raise MalformedChunkError(f"global model of round {plan.round_id} does not match its digest")
        if plan.model.parameter_count != self._spec.count or plan.model.parameter_digest != self._spec.digest:
            raise MalformedChunkError("round plan is for another model layout")
        count = self._spec.count
        received = float32_from_chunks(model_chunks, count * (2 if plan.training.drift_correction else 1))
        global_weights, consortium_control = received[:count], received[count:]
        # The node's own BatchNorm statistics stay; only the aggregated weights are replaced.
        self._model.load_state_dict(restore_state(self._model.state_dict(), global_weights, self._spec))
        self._report_evaluation(plan.round_id - 1)
        if plan.kind is RoundKind.EVALUATE:
            return
        self._metrics.current_round.set(plan.round_id)
        if plan.kind is RoundKind.HEAD_STATISTICS:
            self._upload_statistics(plan)
            return
        generator = torch.Generator().manual_seed(hash((self._entropy, plan.round_id)) & 0x7FFFFFFF)
        config = local_training(plan.training, self._settings)
        scaffold = self._scaffold if plan.training.drift_correction else None
        train_start = time.monotonic()
        result = train_round(self._model, self._data, config, self._device, generator, self._spec, global_weights,
                             scaffold, consortium_control)
        timings = UploadTimings(train=time.monotonic() - train_start)
        self._metrics.observe_phase("train", timings.train)
        log.info("round %d: trained %d steps, loss %.4f, update norm %.4g", plan.round_id, result.stats.steps,
                 result.stats.mean_loss, float(np.linalg.norm(result.update(count))))
        self._upload(plan, result.upload, timings)
        if scaffold is not None:
            sent = received_update(result.upload, plan.quantization) if plan.secure else result.upload
            scaffold.accept(sent[count:])
        log.info("round %d done in %.1f s", plan.round_id, time.monotonic() - started)

    def _upload_statistics(self, plan: RoundPlan) -> None:
        if self._statistics_round is not None:
            log.error("round %d asks for feature statistics again (sent in round %d): refused, nothing sent",
                      plan.round_id, self._statistics_round)
            return
        self._statistics_round = plan.round_id
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

    def _upload(self, plan: RoundPlan, update: np.ndarray, timings: UploadTimings) -> None:
        s, observer = self._settings, self._observer
        chunk_sent = ((lambda sent: observer.chunk_sent(s.node_id, plan.round_id, sent)) if observer is not None
                      else None)
        record: list[np.ndarray] | None = [] if observer is not None and observer.keeps_fields else None
        if plan.secure:
            public = self._public_key()
            if plan.key_id != public.key_id:
                raise WrongKeyError(f"round {plan.round_id} names key {plan.key_id!r}; "
                                    f"the key authority serves {public.key_id!r}")
            require_signed_layout(plan, public)
            assert self._pool is not None
            seed = np.random.SeedSequence(self._entropy, spawn_key=(plan.round_id,))
            chunks = secure_upload(plan, update, s.node_id, self._identity, self._pool, public.slots, timings, seed,
                                   record, chunk_sent)
        else:
            chunks = plaintext_upload(plan, update, s.node_id, self._identity, timings, chunk_sent)
        receipt = self._client.submit(self._count_bytes(chunks), timeout=plan.transfer.deadline_seconds)
        phases = timings.phases()
        for phase in ("encode", "encrypt", "upload"):
            self._metrics.observe_phase(phase, getattr(phases, phase))
        log.info("round %d: upload accepted (%d chunks)", receipt.round_id, receipt.chunks)
        if observer is not None:
            fields = np.concatenate(record).astype(np.int64) if record else None
            observer.uploaded(s.node_id, plan.round_id, update, fields)

    def _count_bytes(self, chunks: Iterator[UploadChunk]) -> Iterator[UploadChunk]:
        for chunk in chunks:
            self._metrics.bytes_sent.inc(sum(len(c) for c in chunk.ciphertexts) + len(chunk.plaintext_values))
            yield chunk

    def _report_evaluation(self, model_round: int) -> None:
        report = evaluation_report(self._model, self._data, self._device, self._settings.node_id, model_round)
        self._client.report(report)
        counts = report.counts
        accuracy = np.trace(counts.confusion) / max(counts.examples, 1)
        log.info("model after round %d: local validation accuracy %.3f on %d images", model_round, accuracy,
                 counts.examples)
