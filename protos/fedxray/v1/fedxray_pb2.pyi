from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SumLayout(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUM_LAYOUT_UPDATE: _ClassVar[SumLayout]
    SUM_LAYOUT_STATISTICS: _ClassVar[SumLayout]

class RoundKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROUND_KIND_UNSPECIFIED: _ClassVar[RoundKind]
    ROUND_KIND_TRAIN: _ClassVar[RoundKind]
    ROUND_KIND_EVALUATE: _ClassVar[RoundKind]
    ROUND_KIND_HEAD_STATISTICS: _ClassVar[RoundKind]
SUM_LAYOUT_UPDATE: SumLayout
SUM_LAYOUT_STATISTICS: SumLayout
ROUND_KIND_UNSPECIFIED: RoundKind
ROUND_KIND_TRAIN: RoundKind
ROUND_KIND_EVALUATE: RoundKind
ROUND_KIND_HEAD_STATISTICS: RoundKind

class GetPublicContextRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PublicContext(_message.Message):
    __slots__ = ("context", "key_id", "bits", "fields_per_slot", "max_participants", "slots_per_ciphertext", "min_participants", "statistics_bits", "mask_agreement_key")
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_PER_SLOT_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_PER_CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_BITS_FIELD_NUMBER: _ClassVar[int]
    MASK_AGREEMENT_KEY_FIELD_NUMBER: _ClassVar[int]
    context: bytes
    key_id: str
    bits: int
    fields_per_slot: int
    max_participants: int
    slots_per_ciphertext: int
    min_participants: int
    statistics_bits: int
    mask_agreement_key: bytes
    def __init__(self, context: _Optional[bytes] = ..., key_id: _Optional[str] = ..., bits: _Optional[int] = ..., fields_per_slot: _Optional[int] = ..., max_participants: _Optional[int] = ..., slots_per_ciphertext: _Optional[int] = ..., min_participants: _Optional[int] = ..., statistics_bits: _Optional[int] = ..., mask_agreement_key: _Optional[bytes] = ...) -> None: ...

class Attestation(_message.Message):
    __slots__ = ("node_id", "round_id", "key_id", "chunk_count", "stream_digest", "signature", "layout", "attempt", "participant_set_sha256", "value_count", "chunk_ciphertexts", "plan_sha256", "disclosures_sha256", "model_sha256")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    STREAM_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANT_SET_SHA256_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    DISCLOSURES_SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_SHA256_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    round_id: int
    key_id: str
    chunk_count: int
    stream_digest: bytes
    signature: bytes
    layout: SumLayout
    attempt: int
    participant_set_sha256: bytes
    value_count: int
    chunk_ciphertexts: int
    plan_sha256: bytes
    disclosures_sha256: bytes
    model_sha256: bytes
    def __init__(self, node_id: _Optional[str] = ..., round_id: _Optional[int] = ..., key_id: _Optional[str] = ..., chunk_count: _Optional[int] = ..., stream_digest: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., layout: _Optional[_Union[SumLayout, str]] = ..., attempt: _Optional[int] = ..., participant_set_sha256: _Optional[bytes] = ..., value_count: _Optional[int] = ..., chunk_ciphertexts: _Optional[int] = ..., plan_sha256: _Optional[bytes] = ..., disclosures_sha256: _Optional[bytes] = ..., model_sha256: _Optional[bytes] = ...) -> None: ...

class DecryptManifest(_message.Message):
    __slots__ = ("round_id", "key_id", "chunk_count", "value_count", "attestations", "layout", "attempt", "participants", "chunk_ciphertexts", "plan_sha256")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    ATTESTATIONS_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAN_SHA256_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    key_id: str
    chunk_count: int
    value_count: int
    attestations: _containers.RepeatedCompositeFieldContainer[Attestation]
    layout: SumLayout
    attempt: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    chunk_ciphertexts: int
    plan_sha256: bytes
    def __init__(self, round_id: _Optional[int] = ..., key_id: _Optional[str] = ..., chunk_count: _Optional[int] = ..., value_count: _Optional[int] = ..., attestations: _Optional[_Iterable[_Union[Attestation, _Mapping]]] = ..., layout: _Optional[_Union[SumLayout, str]] = ..., attempt: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., chunk_ciphertexts: _Optional[int] = ..., plan_sha256: _Optional[bytes] = ...) -> None: ...

class CiphertextChunk(_message.Message):
    __slots__ = ("index", "ciphertexts")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    index: int
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, index: _Optional[int] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ...) -> None: ...

class DecryptRequest(_message.Message):
    __slots__ = ("manifest", "chunk")
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    manifest: DecryptManifest
    chunk: CiphertextChunk
    def __init__(self, manifest: _Optional[_Union[DecryptManifest, _Mapping]] = ..., chunk: _Optional[_Union[CiphertextChunk, _Mapping]] = ...) -> None: ...

class DecryptResponse(_message.Message):
    __slots__ = ("index", "field_values", "value_count", "value_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    FIELD_VALUES_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALUE_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    field_values: bytes
    value_count: int
    value_bytes: int
    def __init__(self, index: _Optional[int] = ..., field_values: _Optional[bytes] = ..., value_count: _Optional[int] = ..., value_bytes: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id", "parameter_count", "parameter_digest", "class_names", "class_counts")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAMES_FIELD_NUMBER: _ClassVar[int]
    CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    parameter_count: int
    parameter_digest: str
    class_names: _containers.RepeatedScalarFieldContainer[str]
    class_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, node_id: _Optional[str] = ..., parameter_count: _Optional[int] = ..., parameter_digest: _Optional[str] = ..., class_names: _Optional[_Iterable[str]] = ..., class_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class LocalTraining(_message.Message):
    __slots__ = ("epochs", "learning_rate", "batch_size", "optimizer", "proximal_mu", "drift_correction", "record_epsilon", "trainable")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    PROXIMAL_MU_FIELD_NUMBER: _ClassVar[int]
    DRIFT_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    RECORD_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TRAINABLE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    learning_rate: float
    batch_size: int
    optimizer: str
    proximal_mu: float
    drift_correction: bool
    record_epsilon: float
    trainable: str
    def __init__(self, epochs: _Optional[int] = ..., learning_rate: _Optional[float] = ..., batch_size: _Optional[int] = ..., optimizer: _Optional[str] = ..., proximal_mu: _Optional[float] = ..., drift_correction: _Optional[bool] = ..., record_epsilon: _Optional[float] = ..., trainable: _Optional[str] = ...) -> None: ...

class Codec(_message.Message):
    __slots__ = ("clip_norm", "scale", "coordinate_bound", "bits", "fields_per_slot", "max_participants", "min_participants", "noise_kind", "noise_variance", "rounding_beta", "rounding_pieces", "layout")
    CLIP_NORM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    COORDINATE_BOUND_FIELD_NUMBER: _ClassVar[int]
    BITS_FIELD_NUMBER: _ClassVar[int]
    FIELDS_PER_SLOT_FIELD_NUMBER: _ClassVar[int]
    MAX_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    MIN_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    NOISE_KIND_FIELD_NUMBER: _ClassVar[int]
    NOISE_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_BETA_FIELD_NUMBER: _ClassVar[int]
    ROUNDING_PIECES_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    clip_norm: float
    scale: float
    coordinate_bound: int
    bits: int
    fields_per_slot: int
    max_participants: int
    min_participants: int
    noise_kind: str
    noise_variance: float
    rounding_beta: float
    rounding_pieces: int
    layout: SumLayout
    def __init__(self, clip_norm: _Optional[float] = ..., scale: _Optional[float] = ..., coordinate_bound: _Optional[int] = ..., bits: _Optional[int] = ..., fields_per_slot: _Optional[int] = ..., max_participants: _Optional[int] = ..., min_participants: _Optional[int] = ..., noise_kind: _Optional[str] = ..., noise_variance: _Optional[float] = ..., rounding_beta: _Optional[float] = ..., rounding_pieces: _Optional[int] = ..., layout: _Optional[_Union[SumLayout, str]] = ...) -> None: ...

class Transfer(_message.Message):
    __slots__ = ("upload_value_count", "chunk_count", "chunk_ciphertexts", "plaintext_chunk_values", "deadline_seconds")
    UPLOAD_VALUE_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_CHUNK_VALUES_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    upload_value_count: int
    chunk_count: int
    chunk_ciphertexts: int
    plaintext_chunk_values: int
    deadline_seconds: float
    def __init__(self, upload_value_count: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_ciphertexts: _Optional[int] = ..., plaintext_chunk_values: _Optional[int] = ..., deadline_seconds: _Optional[float] = ...) -> None: ...

class ModelBroadcast(_message.Message):
    __slots__ = ("parameter_count", "parameter_digest", "sha256", "chunk_count")
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    parameter_count: int
    parameter_digest: str
    sha256: bytes
    chunk_count: int
    def __init__(self, parameter_count: _Optional[int] = ..., parameter_digest: _Optional[str] = ..., sha256: _Optional[bytes] = ..., chunk_count: _Optional[int] = ...) -> None: ...

class RoundPlan(_message.Message):
    __slots__ = ("round_id", "kind", "secure", "key_id", "training", "codec", "transfer", "model", "attempt", "participants")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SECURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    kind: RoundKind
    secure: bool
    key_id: str
    training: LocalTraining
    codec: Codec
    transfer: Transfer
    model: ModelBroadcast
    attempt: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round_id: _Optional[int] = ..., kind: _Optional[_Union[RoundKind, str]] = ..., secure: _Optional[bool] = ..., key_id: _Optional[str] = ..., training: _Optional[_Union[LocalTraining, _Mapping]] = ..., codec: _Optional[_Union[Codec, _Mapping]] = ..., transfer: _Optional[_Union[Transfer, _Mapping]] = ..., model: _Optional[_Union[ModelBroadcast, _Mapping]] = ..., attempt: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("round_id", "index", "values")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    index: int
    values: bytes
    def __init__(self, round_id: _Optional[int] = ..., index: _Optional[int] = ..., values: _Optional[bytes] = ...) -> None: ...

class TrainingFinished(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    def __init__(self, rounds: _Optional[int] = ...) -> None: ...

class RoundMessage(_message.Message):
    __slots__ = ("plan", "model_chunk", "finished")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    MODEL_CHUNK_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    plan: RoundPlan
    model_chunk: ModelChunk
    finished: TrainingFinished
    def __init__(self, plan: _Optional[_Union[RoundPlan, _Mapping]] = ..., model_chunk: _Optional[_Union[ModelChunk, _Mapping]] = ..., finished: _Optional[_Union[TrainingFinished, _Mapping]] = ...) -> None: ...

class RoundDecline(_message.Message):
    __slots__ = ("node_id", "round_id", "attempt", "reason", "detail")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    round_id: int
    attempt: int
    reason: str
    detail: str
    def __init__(self, node_id: _Optional[str] = ..., round_id: _Optional[int] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class DeclineAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("round_id", "key_id", "node_id", "index", "ciphertexts", "plaintext_values", "attestation", "phase_seconds", "attempt", "record_privacy", "masked_class_counts")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXTS_FIELD_NUMBER: _ClassVar[int]
    PLAINTEXT_VALUES_FIELD_NUMBER: _ClassVar[int]
    ATTESTATION_FIELD_NUMBER: _ClassVar[int]
    PHASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RECORD_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    MASKED_CLASS_COUNTS_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    key_id: str
    node_id: str
    index: int
    ciphertexts: _containers.RepeatedScalarFieldContainer[bytes]
    plaintext_values: bytes
    attestation: Attestation
    phase_seconds: NodePhaseSeconds
    attempt: int
    record_privacy: RecordPrivacySpent
    masked_class_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, round_id: _Optional[int] = ..., key_id: _Optional[str] = ..., node_id: _Optional[str] = ..., index: _Optional[int] = ..., ciphertexts: _Optional[_Iterable[bytes]] = ..., plaintext_values: _Optional[bytes] = ..., attestation: _Optional[_Union[Attestation, _Mapping]] = ..., phase_seconds: _Optional[_Union[NodePhaseSeconds, _Mapping]] = ..., attempt: _Optional[int] = ..., record_privacy: _Optional[_Union[RecordPrivacySpent, _Mapping]] = ..., masked_class_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class RecordPrivacySpent(_message.Message):
    __slots__ = ("epsilon", "delta", "noise_multiplier", "unit", "rdp_epsilon")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    RDP_EPSILON_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    noise_multiplier: float
    unit: str
    rdp_epsilon: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., unit: _Optional[str] = ..., rdp_epsilon: _Optional[float] = ...) -> None: ...

class NodePhaseSeconds(_message.Message):
    __slots__ = ("train", "encode", "encrypt", "upload", "precompute")
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    ENCODE_FIELD_NUMBER: _ClassVar[int]
    ENCRYPT_FIELD_NUMBER: _ClassVar[int]
    UPLOAD_FIELD_NUMBER: _ClassVar[int]
    PRECOMPUTE_FIELD_NUMBER: _ClassVar[int]
    train: float
    encode: float
    encrypt: float
    upload: float
    precompute: float
    def __init__(self, train: _Optional[float] = ..., encode: _Optional[float] = ..., encrypt: _Optional[float] = ..., upload: _Optional[float] = ..., precompute: _Optional[float] = ...) -> None: ...

class SubmitReceipt(_message.Message):
    __slots__ = ("round_id", "chunks", "stream_digest")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    STREAM_DIGEST_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    chunks: int
    stream_digest: bytes
    def __init__(self, round_id: _Optional[int] = ..., chunks: _Optional[int] = ..., stream_digest: _Optional[bytes] = ...) -> None: ...

class EvaluationReport(_message.Message):
    __slots__ = ("node_id", "model_round", "num_classes", "confusion", "loss_sum", "examples", "positive_histograms", "negative_histograms", "histogram_bins", "histogram_spacing", "calibration_positive_histograms", "calibration_negative_histograms", "masked_counts", "masked_for")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    LOSS_SUM_FIELD_NUMBER: _ClassVar[int]
    EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_BINS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_SPACING_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_POSITIVE_HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_NEGATIVE_HISTOGRAMS_FIELD_NUMBER: _ClassVar[int]
    MASKED_COUNTS_FIELD_NUMBER: _ClassVar[int]
    MASKED_FOR_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    model_round: int
    num_classes: int
    confusion: _containers.RepeatedScalarFieldContainer[int]
    loss_sum: float
    examples: int
    positive_histograms: _containers.RepeatedScalarFieldContainer[int]
    negative_histograms: _containers.RepeatedScalarFieldContainer[int]
    histogram_bins: int
    histogram_spacing: str
    calibration_positive_histograms: _containers.RepeatedScalarFieldContainer[int]
    calibration_negative_histograms: _containers.RepeatedScalarFieldContainer[int]
    masked_counts: _containers.RepeatedScalarFieldContainer[int]
    masked_for: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node_id: _Optional[str] = ..., model_round: _Optional[int] = ..., num_classes: _Optional[int] = ..., confusion: _Optional[_Iterable[int]] = ..., loss_sum: _Optional[float] = ..., examples: _Optional[int] = ..., positive_histograms: _Optional[_Iterable[int]] = ..., negative_histograms: _Optional[_Iterable[int]] = ..., histogram_bins: _Optional[int] = ..., histogram_spacing: _Optional[str] = ..., calibration_positive_histograms: _Optional[_Iterable[int]] = ..., calibration_negative_histograms: _Optional[_Iterable[int]] = ..., masked_counts: _Optional[_Iterable[int]] = ..., masked_for: _Optional[_Iterable[str]] = ...) -> None: ...

class EvaluationAck(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServiceStatus(_message.Message):
    __slots__ = ("service", "holds_secret_key", "key_id", "current_round", "decrypted_rounds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    HOLDS_SECRET_KEY_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    DECRYPTED_ROUNDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    holds_secret_key: bool
    key_id: str
    current_round: int
    decrypted_rounds: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, service: _Optional[str] = ..., holds_secret_key: _Optional[bool] = ..., key_id: _Optional[str] = ..., current_round: _Optional[int] = ..., decrypted_rounds: _Optional[_Iterable[int]] = ...) -> None: ...
