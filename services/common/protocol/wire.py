"""The wire edge: protobuf messages to typed objects and back, for every service.

Nothing below this module (and the gRPC clients and servicers that call it) reads a
protobuf field. A message that cannot become a valid typed object is refused here
with `MalformedChunkError` (INVALID_ARGUMENT), before any domain code sees it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from typing import cast

import numpy as np

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.errors import MalformedChunkError, PackingError
from services.common.ml.choices import TRAINABLE, Trainable
from services.common.ml.classification_metrics import HISTOGRAM_SPACING
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport, MaskedEvaluationReport
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import (
    LocalTrainingPlan,
    ModelBroadcast,
    ModelChunk,
    RoundDecline,
    RoundKind,
    RoundMessage,
    RoundPlan,
    SumLayout,
    TrainingFinished,
    TransferPlan,
)
from services.common.protocol.upload import (
    Attestation,
    DecryptManifest,
    PhaseSeconds,
    RecordPrivacySpent,
    SubmitReceipt,
    UploadChunk,
)
from services.common.secure_sum.masked_evaluation import vector_length
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import FieldLayout
from services.common.secure_sum.update_codec import QuantizationPlan

_KIND_TO_WIRE = {RoundKind.TRAIN: pb.ROUND_KIND_TRAIN, RoundKind.EVALUATE: pb.ROUND_KIND_EVALUATE,
                 RoundKind.HEAD_STATISTICS: pb.ROUND_KIND_HEAD_STATISTICS}
_KIND_FROM_WIRE = {wire: kind for kind, wire in _KIND_TO_WIRE.items()}


def sum_layout_to_wire(layout: SumLayout) -> pb.SumLayout:
    return cast(pb.SumLayout, int(layout))  # the wire's enum values are ours (SumLayout's docstring)


def sum_layout_from_wire(value: int) -> SumLayout:
    try:
        return SumLayout(value)
    except ValueError as error:
        raise MalformedChunkError(f"unknown sum layout {value}") from error


# ---------------------------------------------------------------- round plans and broadcasts
def plan_to_wire(plan: RoundPlan) -> pb.RoundPlan:
    q, t, m, training = plan.quantization, plan.transfer, plan.model, plan.training
    return pb.RoundPlan(
        round_id=plan.round_id, kind=_KIND_TO_WIRE[plan.kind], secure=plan.secure, key_id=plan.key_id,
        training=pb.LocalTraining(epochs=training.epochs, learning_rate=training.learning_rate,
                                  batch_size=training.batch_size, optimizer=training.optimizer,
                                  proximal_mu=training.proximal_mu, drift_correction=training.drift_correction,
                                  record_epsilon=training.record_epsilon, trainable=training.trainable),
        codec=pb.Codec(clip_norm=q.clip_norm, scale=q.scale, coordinate_bound=q.coordinate_bound, bits=q.bits,
                       fields_per_slot=plan.layout.fields_per_slot, max_participants=plan.layout.max_participants,
                       min_participants=q.min_participants, noise_kind=str(q.noise_kind),
                       noise_variance=q.noise_variance, rounding_beta=q.rounding_beta,
                       rounding_pieces=q.rounding_pieces, layout=sum_layout_to_wire(plan.sum_layout)),
        transfer=pb.Transfer(upload_value_count=q.dimension, chunk_count=t.chunk_count,
                             chunk_ciphertexts=t.chunk_ciphertexts, plaintext_chunk_values=t.plaintext_chunk_values,
                             deadline_seconds=t.deadline_seconds),
        model=pb.ModelBroadcast(parameter_count=m.parameter_count, parameter_digest=m.parameter_digest,
                                sha256=m.sha256, chunk_count=m.chunk_count),
        attempt=plan.attempt, participants=list(plan.participants))


def plan_from_wire(message: pb.RoundPlan) -> RoundPlan:
    kind = _KIND_FROM_WIRE.get(message.kind)
    if kind is None:
        raise MalformedChunkError(f"round {message.round_id} has no known kind ({message.kind})")
    codec, training = message.codec, message.training
    if training.optimizer not in ("sgd", "adamw"):
        raise MalformedChunkError(f"round {message.round_id} names an unknown local optimizer {training.optimizer!r}")
    if sum_layout_from_wire(codec.layout) is not SumLayout.for_round(kind):
        raise MalformedChunkError(f"round {message.round_id} packs in another layout than its kind's")
    try:
        noise = NoiseKind(codec.noise_kind)
        layout = FieldLayout(codec.bits, codec.max_participants, codec.fields_per_slot)
    except (ValueError, PackingError) as error:
        raise MalformedChunkError(f"round {message.round_id} has an invalid codec: {error}") from error
    quantization = QuantizationPlan(
        dimension=message.transfer.upload_value_count, clip_norm=codec.clip_norm, scale=codec.scale,
        coordinate_bound=codec.coordinate_bound, bits=codec.bits, min_participants=codec.min_participants,
        noise_kind=noise, noise_variance=codec.noise_variance, rounding_pieces=codec.rounding_pieces,
        rounding_beta=codec.rounding_beta)
    t, m = message.transfer, message.model
    return RoundPlan(
        round_id=message.round_id, kind=kind, secure=message.secure, key_id=message.key_id,
        training=LocalTrainingPlan(training.epochs, training.learning_rate, training.batch_size,
                                   "adamw" if training.optimizer == "adamw" else "sgd", training.proximal_mu,
                                   training.drift_correction, training.record_epsilon,
                                   _trainable_from_wire(training.trainable)),
        quantization=quantization, layout=layout,
        transfer=TransferPlan(t.chunk_count, t.chunk_ciphertexts, t.plaintext_chunk_values, t.deadline_seconds),
        model=ModelBroadcast(m.parameter_count, m.parameter_digest, m.sha256, m.chunk_count),
        attempt=message.attempt, participants=tuple(message.participants))


def _trainable_from_wire(value: str) -> Trainable:
    if value in ("", "all"):
        return "all"
    if value == "last_block":
        return "last_block"
    if value == "head":
        return "head"
    raise MalformedChunkError(f"a plan trains {value!r}; trainable is one of {TRAINABLE}")


PLAN_DOMAIN = b"fedxray.v1/plan"


def plan_digest(plan: RoundPlan) -> bytes:
    """SHA-256 naming a whole plan (round, attempt, set, kind, model, training, codec, transfer): nodes mask for it
    and sign it, so nodes sent different plans make masks that never cancel."""
    return hashlib.sha256(PLAN_DOMAIN + plan_to_wire(plan).SerializeToString(deterministic=True)).digest()


def round_message_to_wire(message: RoundMessage) -> pb.RoundMessage:
    if isinstance(message, RoundPlan):
        return pb.RoundMessage(plan=plan_to_wire(message))
    if isinstance(message, ModelChunk):
        return pb.RoundMessage(model_chunk=pb.ModelChunk(round_id=message.round_id, index=message.index,
                                                         values=message.values))
    return pb.RoundMessage(finished=pb.TrainingFinished(rounds=message.rounds))


def round_message_from_wire(message: pb.RoundMessage) -> RoundMessage:
    body = message.WhichOneof("body")
    if body == "plan":
        return plan_from_wire(message.plan)
    if body == "model_chunk":
        chunk = message.model_chunk
        return ModelChunk(chunk.round_id, chunk.index, chunk.values)
    if body == "finished":
        return TrainingFinished(message.finished.rounds)
    raise MalformedChunkError("a round message without a body")


def join_to_wire(node_id: str, spec: ParameterSpec, classes: ClassRoster) -> pb.JoinRequest:
    return pb.JoinRequest(node_id=node_id, parameter_count=spec.count, parameter_digest=spec.digest,
                          class_names=list(classes.names), class_counts=list(classes.counts))


def sender_from_wire(message: pb.JoinRequest | pb.EvaluationReport | pb.RoundDecline) -> str:
    """The node a message says it comes from, read alone so that a server checks who speaks before it parses
    (a malformed message from the wrong certificate is refused for identity, not for its shape)."""
    return message.node_id


def join_from_wire(message: pb.JoinRequest) -> tuple[str, ParameterSpec, ClassRoster]:
    counts = tuple(int(count) for count in message.class_counts)
    if counts and len(counts) != len(message.class_names):
        raise MalformedChunkError(f"a join with {len(message.class_names)} class names and {len(counts)} counts")
    return (message.node_id, ParameterSpec(message.parameter_count, message.parameter_digest, (), ()),
            ClassRoster(tuple(message.class_names), counts))


# ---------------------------------------------------------------- uploads
def attestation_to_wire(a: Attestation) -> pb.Attestation:
    return pb.Attestation(node_id=a.node_id, round_id=a.round_id, key_id=a.key_id, chunk_count=a.chunk_count,
                          stream_digest=a.stream_digest, signature=a.signature, layout=sum_layout_to_wire(a.layout),
                          attempt=a.attempt, participant_set_sha256=a.participant_set, value_count=a.value_count,
                          chunk_ciphertexts=a.chunk_ciphertexts, plan_sha256=a.plan_digest,
                          disclosures_sha256=a.disclosures, model_sha256=a.model_digest)


def attestation_from_wire(m: pb.Attestation) -> Attestation:
    return Attestation(m.node_id, m.round_id, m.key_id, m.chunk_count, m.stream_digest, m.signature,
                       sum_layout_from_wire(m.layout), m.attempt, m.participant_set_sha256, m.value_count,
                       m.chunk_ciphertexts, m.plan_sha256, m.disclosures_sha256, m.model_sha256)


def _phases_to_wire(phases: PhaseSeconds) -> pb.NodePhaseSeconds:
    return pb.NodePhaseSeconds(train=phases.train, encode=phases.encode, encrypt=phases.encrypt, upload=phases.upload,
                               precompute=phases.precompute)


def upload_chunk_to_wire(chunk: UploadChunk) -> pb.UpdateChunk:
    message = pb.UpdateChunk(round_id=chunk.round_id, key_id=chunk.key_id, node_id=chunk.node_id, index=chunk.index,
                             ciphertexts=list(chunk.ciphertexts), plaintext_values=chunk.plaintext_values,
                             attempt=chunk.attempt, masked_class_counts=list(chunk.masked_class_counts))
    if chunk.attestation is not None:
        message.attestation.CopyFrom(attestation_to_wire(chunk.attestation))
    if chunk.phases is not None:
        message.phase_seconds.CopyFrom(_phases_to_wire(chunk.phases))
    if chunk.record_privacy is not None:
        spent = chunk.record_privacy
        message.record_privacy.CopyFrom(pb.RecordPrivacySpent(epsilon=spent.epsilon, delta=spent.delta,
                                                              noise_multiplier=spent.noise_multiplier,
                                                              unit=spent.unit, rdp_epsilon=spent.rdp_epsilon))
    return message


def upload_chunk_from_wire(message: pb.UpdateChunk) -> UploadChunk:
    phases = message.phase_seconds
    return UploadChunk(
        message.round_id, message.key_id, message.node_id, message.index, tuple(message.ciphertexts),
        message.plaintext_values,
        attestation_from_wire(message.attestation) if message.HasField("attestation") else None,
        PhaseSeconds(phases.train, phases.encode, phases.encrypt, phases.upload, phases.precompute)
        if message.HasField("phase_seconds") else None, message.attempt,
        _record_privacy_from_wire(message.record_privacy) if message.HasField("record_privacy") else None,
        tuple(message.masked_class_counts))


def _record_privacy_from_wire(message: pb.RecordPrivacySpent) -> RecordPrivacySpent:
    unit = message.unit or "image"
    if unit not in ("patient", "image"):
        raise MalformedChunkError(f"a record-level epsilon per {unit!r}; the unit is a patient or an image")
    return RecordPrivacySpent(message.epsilon, message.delta, message.noise_multiplier, unit, message.rdp_epsilon)


def receipt_to_wire(receipt: SubmitReceipt) -> pb.SubmitReceipt:
    return pb.SubmitReceipt(round_id=receipt.round_id, chunks=receipt.chunks, stream_digest=receipt.stream_digest)


def receipt_from_wire(message: pb.SubmitReceipt) -> SubmitReceipt:
    return SubmitReceipt(message.round_id, message.chunks, message.stream_digest)


# ---------------------------------------------------------------- the key authority
def public_key_to_wire(key: PublicKeyInfo) -> pb.PublicContext:
    return pb.PublicContext(context=key.context, key_id=key.key_id, bits=key.update_layout.bits,
                            fields_per_slot=key.update_layout.fields_per_slot,
                            max_participants=key.update_layout.max_participants, slots_per_ciphertext=key.slots,
                            min_participants=key.min_participants, statistics_bits=key.statistics_layout.bits,
                            mask_agreement_key=key.mask_agreement_key)


def public_key_from_wire(message: pb.PublicContext) -> PublicKeyInfo:
    try:
        update = FieldLayout(message.bits, message.max_participants, message.fields_per_slot)
        statistics = FieldLayout(message.statistics_bits, message.max_participants, 1)
    except PackingError as error:
        raise MalformedChunkError(f"the key authority's layouts are invalid: {error}") from error
    return PublicKeyInfo(message.context, message.key_id, update, statistics, message.slots_per_ciphertext,
                         message.min_participants, message.mask_agreement_key)


def manifest_to_wire(manifest: DecryptManifest) -> pb.DecryptManifest:
    return pb.DecryptManifest(round_id=manifest.round_id, key_id=manifest.key_id, chunk_count=manifest.chunk_count,
                              value_count=manifest.value_count,
                              attestations=[attestation_to_wire(a) for a in manifest.attestations],
                              layout=sum_layout_to_wire(manifest.layout), attempt=manifest.attempt,
                              participants=list(manifest.participants),
                              chunk_ciphertexts=manifest.chunk_ciphertexts, plan_sha256=manifest.plan_digest)


def manifest_from_wire(message: pb.DecryptManifest) -> DecryptManifest:
    return DecryptManifest(message.round_id, message.key_id, message.chunk_count, message.value_count,
                           tuple(attestation_from_wire(a) for a in message.attestations),
                           sum_layout_from_wire(message.layout), message.attempt, tuple(message.participants),
                           message.chunk_ciphertexts, message.plan_sha256)


def decline_to_wire(decline: RoundDecline) -> pb.RoundDecline:
    return pb.RoundDecline(node_id=decline.node_id, round_id=decline.round_id, attempt=decline.attempt,
                           reason=decline.reason, detail=decline.detail)


def decline_from_wire(message: pb.RoundDecline) -> RoundDecline:
    return RoundDecline(message.node_id, message.round_id, message.attempt, message.reason, message.detail)


def decrypt_requests(manifest: DecryptManifest, chunks: Iterator[list[bytes]]) -> Iterator[pb.DecryptRequest]:
    """The manifest, then the summed ciphertexts chunk by chunk."""
    yield pb.DecryptRequest(manifest=manifest_to_wire(manifest))
    for index, ciphertexts in enumerate(chunks):
        yield pb.DecryptRequest(chunk=pb.CiphertextChunk(index=index, ciphertexts=ciphertexts))


def field_values_to_wire(index: int, fields: np.ndarray) -> pb.DecryptResponse:
    return pb.DecryptResponse(index=index, field_values=fields.tobytes(), value_count=fields.size,
                              value_bytes=fields.itemsize)


def decrypt_manifest_from_wire(first: pb.DecryptRequest | None) -> DecryptManifest:
    """The manifest a decryption stream opens with."""
    if first is None or not first.HasField("manifest"):
        raise MalformedChunkError("a decryption stream must open with its manifest")
    return manifest_from_wire(first.manifest)


def decrypt_chunk_from_wire(message: pb.DecryptRequest, expected_index: int) -> tuple[int, list[bytes]]:
    """One summed chunk of a decryption stream: its index and ciphertexts."""
    if not message.HasField("chunk"):
        raise MalformedChunkError(f"expected chunk {expected_index}, got another manifest")
    return message.chunk.index, list(message.chunk.ciphertexts)


def status_to_wire(service: str, holds_secret_key: bool, key_id: str = "", *, current_round: int = 0,
                   decrypted_rounds: Iterable[int] = ()) -> pb.ServiceStatus:
    return pb.ServiceStatus(service=service, holds_secret_key=holds_secret_key, key_id=key_id,
                            current_round=current_round, decrypted_rounds=sorted(decrypted_rounds))


def indexed_field_values_from_wire(response: pb.DecryptResponse) -> tuple[int, np.ndarray]:
    """The chunk index and the integers of one decryption response."""
    return response.index, field_values_from_wire(response)


def field_values_from_wire(response: pb.DecryptResponse) -> np.ndarray:
    """The integers of one decryption response."""
    if response.value_bytes not in (0, 4, 8):
        raise MalformedChunkError(f"response {response.index} has {response.value_bytes}-byte values; 4 or 8 expected")
    values = np.frombuffer(response.field_values, dtype="<u8" if response.value_bytes == 8 else "<u4")
    if values.size != response.value_count:
        raise MalformedChunkError(f"response {response.index} carries {values.size} of {response.value_count} values")
    return values.astype(np.int64)


# ---------------------------------------------------------------- evaluation
def _histograms(values: list[int] | object, classes: int, bins: int, *, what: str, node_id: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.int64)
    if array.size != classes * bins:
        raise MalformedChunkError(f"evaluation of node {node_id!r} ({classes} classes, {bins} bins) has {what} of "
                                  "the wrong length")
    return array.reshape(classes, bins)


def evaluation_to_wire(report: EvaluationReport | MaskedEvaluationReport) -> pb.EvaluationReport:
    if isinstance(report, MaskedEvaluationReport):
        return pb.EvaluationReport(node_id=report.node_id, model_round=report.model_round,
                                   num_classes=report.num_classes, histogram_bins=report.histogram_bins,
                                   histogram_spacing=HISTOGRAM_SPACING, masked_counts=list(report.values),
                                   masked_for=list(report.participants))
    counts = report.counts
    message = pb.EvaluationReport(
        node_id=report.node_id, model_round=report.model_round, num_classes=counts.num_classes,
        confusion=counts.confusion.reshape(-1).tolist(), loss_sum=counts.loss_sum, examples=counts.examples,
        positive_histograms=counts.positive_histograms.reshape(-1).tolist(),
        negative_histograms=counts.negative_histograms.reshape(-1).tolist(), histogram_bins=counts.histogram_bins,
        histogram_spacing=report.histogram_spacing)
    if report.calibration_positive is not None and report.calibration_negative is not None:
        message.calibration_positive_histograms.extend(report.calibration_positive.reshape(-1).tolist())
        message.calibration_negative_histograms.extend(report.calibration_negative.reshape(-1).tolist())
    return message


def evaluation_from_wire(message: pb.EvaluationReport) -> EvaluationReport | MaskedEvaluationReport:
    classes, bins, node = message.num_classes, message.histogram_bins, message.node_id
    if classes < 1 or bins < 1:
        raise MalformedChunkError(f"evaluation of node {node!r} has {classes} classes and {bins} bins")
    if message.masked_counts or message.masked_for:
        if (message.confusion or message.positive_histograms or message.negative_histograms or message.examples
                or message.loss_sum or message.calibration_positive_histograms
                or message.calibration_negative_histograms):
            raise MalformedChunkError(f"evaluation of node {node!r} holds masked and plain counts in one report")
        if message.histogram_spacing != HISTOGRAM_SPACING:
            raise MalformedChunkError(f"evaluation of node {node!r} uses histogram spacing "
                                      f"{message.histogram_spacing!r}, expected {HISTOGRAM_SPACING!r}")
        participants = tuple(sorted(message.masked_for))
        if node not in participants or len(set(participants)) != len(participants):
            raise MalformedChunkError(f"masked evaluation of node {node!r} is masked for {list(participants)}, a set "
                                      "without it or with a member twice")
        if len(message.masked_counts) != vector_length(classes, bins):
            raise MalformedChunkError(f"masked evaluation of node {node!r} holds {len(message.masked_counts)} values; "
                                      f"{classes} classes and {bins} bins make {vector_length(classes, bins)}")
        return MaskedEvaluationReport(node, message.model_round, classes, bins, participants,
                                      tuple(message.masked_counts))
    counts = EvaluationCounts(
        _histograms(message.confusion, classes, classes, what="a confusion matrix", node_id=node), message.loss_sum,
        message.examples, _histograms(message.positive_histograms, classes, bins, what="positive histograms",
                                      node_id=node),
        _histograms(message.negative_histograms, classes, bins, what="negative histograms", node_id=node))
    calibration = (len(message.calibration_positive_histograms), len(message.calibration_negative_histograms))
    if calibration == (0, 0):
        return EvaluationReport(node, message.model_round, counts, histogram_spacing=message.histogram_spacing)
    return EvaluationReport(
        node, message.model_round, counts,
        _histograms(message.calibration_positive_histograms, classes, bins, what="calibration histograms",
                    node_id=node),
        _histograms(message.calibration_negative_histograms, classes, bins, what="calibration histograms",
                    node_id=node),
        message.histogram_spacing)
