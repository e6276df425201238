"""A round's plan and the other messages the aggregator streams to its nodes, as typed objects.

The wire format lives in `protos/`; `services/common/protocol/wire.py` converts at the edge. Code
below that edge reads these objects only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from services.common.ml.choices import Trainable
from services.common.secure_sum.packing import FieldLayout
from services.common.secure_sum.update_codec import QuantizationPlan

LocalOptimizer = Literal["sgd", "adamw"]


class RoundKind(enum.Enum):
    TRAIN = "train"
    EVALUATE = "evaluate"  # evaluate the received model and report; nothing is uploaded
    HEAD_STATISTICS = "head_statistics"  # upload feature statistics for the head refit instead of training


class SumLayout(enum.IntEnum):
    """How the key authority unpacks a decrypted sum; the values are the wire's."""

    UPDATE = 0  # model updates: the key's bits and fields per slot
    STATISTICS = 1  # feature statistics: one wide field per slot

    @classmethod
    def for_round(cls, kind: RoundKind) -> SumLayout:
        """The one place that decides a round's layout (attestations sign it, the key authority unpacks by it)."""
        return cls.STATISTICS if kind is RoundKind.HEAD_STATISTICS else cls.UPDATE


@dataclass(frozen=True)
class LocalTrainingPlan:
    """The round's part of a hospital's local training."""

    epochs: int
    learning_rate: float
    batch_size: int
    optimizer: LocalOptimizer
    proximal_mu: float
    drift_correction: bool  # SCAFFOLD: the broadcast carries c after the model, an upload c_i's change
    record_epsilon: float = 0.0  # the aggregator's proposed DP-SGD target; 0: none (a hospital's own one wins)
    trainable: Trainable = "all"  # what the round trains and uploads (services/common/ml/trainable.py)


@dataclass(frozen=True)
class TransferPlan:
    chunk_count: int
    chunk_ciphertexts: int  # per secure upload chunk
    plaintext_chunk_values: int  # per plaintext-mode chunk
    deadline_seconds: float


@dataclass(frozen=True)
class ModelBroadcast:
    parameter_count: int
    parameter_digest: str
    sha256: bytes  # of the float32 bytes that follow in model chunks
    chunk_count: int


@dataclass(frozen=True)
class RoundPlan:
    round_id: int
    kind: RoundKind
    secure: bool
    key_id: str
    training: LocalTrainingPlan
    quantization: QuantizationPlan  # its dimension is the upload's value count
    layout: FieldLayout
    transfer: TransferPlan
    model: ModelBroadcast
    attempt: int = 1  # attempts of a round count from 1; each has its own participant set
    participants: tuple[str, ...] = ()  # S, sorted: every node in it masks for exactly this set

    def __post_init__(self) -> None:
        if self.quantization.bits != self.layout.bits:
            raise ValueError(f"round {self.round_id} quantizes to {self.quantization.bits} bits but packs "
                             f"{self.layout.bits}-bit fields")

    @property
    def sum_layout(self) -> SumLayout:
        return SumLayout.for_round(self.kind)

    @property
    def upload_value_count(self) -> int:
        return self.quantization.dimension


@dataclass(frozen=True)
class RoundDecline:
    """A node's refusal of one round attempt's plan, named (a metric label) and explained."""

    node_id: str
    round_id: int
    attempt: int
    reason: str
    detail: str


@dataclass(frozen=True)
class ModelChunk:
    round_id: int
    index: int
    values: bytes  # little-endian float32


@dataclass(frozen=True)
class TrainingFinished:
    rounds: int


RoundMessage = RoundPlan | ModelChunk | TrainingFinished
