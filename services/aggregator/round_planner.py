"""What each round asks of the nodes: the round plans, built from the settings, the key and the strategy.

The quantization of updates and of head statistics is decided once per run, from the
key authority's layouts; every plan of that kind carries it.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from services.aggregator.config import AggregatorSettings
from services.aggregator.round_schedule import round_learning_rate
from services.common.errors import PrivacyBudgetError
from services.common.ml.model_spec import ParameterSpec
from services.common.protocol.chunking import MODEL_CHUNK_VALUES, chunk_count, float32_chunks, upload_chunk_count
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import (
    LocalTrainingPlan,
    ModelBroadcast,
    RoundKind,
    RoundPlan,
    SumLayout,
    TransferPlan,
)
from services.common.secure_sum.update_codec import QuantizationPlan, plan_quantization, plan_statistics

log = logging.getLogger(__name__)


class RoundPlanner:
    def __init__(self, settings: AggregatorSettings, key: PublicKeyInfo, spec: ParameterSpec, *, upload_dimension: int,
                 statistics_dimension: int) -> None:
        s = self._settings = settings
        if s.secure and s.min_participants < key.min_participants:
            raise PrivacyBudgetError(f"aggregator quorum {s.min_participants} is below the key authority's "
                                     f"policy of {key.min_participants} participants")
        self._key = key
        self._spec = spec
        update = key.layout_for(SumLayout.UPDATE)
        self.update_plan = plan_quantization(
            upload_dimension, s.clip_norm, update.bits, max_participants=update.max_participants,
                                             min_participants=s.min_participants, noise_kind=s.noise_kind,
            noise_variance=s.noise_variance, rounding_pieces=upload_chunk_count(upload_dimension, update, key.slots,
                                                                 s.chunk_ciphertexts))
        statistics = key.layout_for(SumLayout.STATISTICS)
        self.statistics_plan = plan_statistics(
            statistics_dimension, s.clip_norm, statistics.bits, max_participants=statistics.max_participants,
                                               min_participants=s.min_participants,
            noise_kind=s.noise_kind, noise_variance=s.noise_variance,
                                               rounding_pieces=upload_chunk_count(statistics_dimension, statistics,
                                                                               key.slots, s.chunk_ciphertexts))
        if s.secure:
            q = self.update_plan
            log.info("plan: clip %.3g, scale %.4g, %d-bit fields, coordinate bound %d, noise %s variance %.4g, "
                     "L2 sensitivity %.4g", q.clip_norm, q.scale, q.bits, q.coordinate_bound, q.noise_kind,
                     q.noise_variance, q.l2_sensitivity)

    def quantization(self, kind: RoundKind) -> QuantizationPlan:
        return self.statistics_plan if kind is RoundKind.HEAD_STATISTICS else self.update_plan

    def plan(self, round_id: int, kind: RoundKind, broadcast: list[bytes], *, attempt: int = 1,
             participants: frozenset[str] = frozenset()) -> RoundPlan:
        """The plan of attempt `attempt` of round `round_id` for the participant set `participants`; `broadcast` is
        the model chunks that follow it."""
        s, quantization = self._settings, self.quantization(kind)
        training = training_plan(s, round_id)
        chunks = (quantization.rounding_pieces if s.secure
                  else chunk_count(quantization.dimension, s.plaintext_chunk_values))
        transfer = TransferPlan(chunks, s.chunk_ciphertexts, s.plaintext_chunk_values, s.round_deadline_seconds)
        model = ModelBroadcast(self._spec.count, self._spec.digest, hashlib.sha256(b"".join(broadcast)).digest(),
                               len(broadcast))
        return RoundPlan(round_id, kind, s.secure, self._key.key_id, training, quantization,
                         self._key.layout_for(SumLayout.for_round(kind)), transfer, model, attempt,
                         tuple(sorted(participants)))


def training_plan(settings: AggregatorSettings, round_id: int) -> LocalTrainingPlan:
    """The round's part of every hospital's local training."""
    s = settings
    return LocalTrainingPlan(
        s.local_epochs, round_learning_rate(s.learning_rate, round_id, s.rounds, schedule=s.round_schedule,
                                            floor=s.round_floor),
        s.batch_size, s.local_optimizer, s.proximal_mu, s.drift_correction, s.record_epsilon or 0.0, s.trainable)


def broadcast_chunks(values: np.ndarray) -> list[bytes]:
    """What follows a plan: the strategy's broadcast as little-endian float32 model chunks."""
    return list(float32_chunks(values, MODEL_CHUNK_VALUES))
