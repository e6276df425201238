"""Evaluation through the secure sum: a hospital's evaluation counts go under pairwise masks, so that the aggregator
reads only their sum over the evaluation's participant set.

The counts (examples, loss sum, whether a calibration split was counted, confusion matrix, score histograms and
calibration histograms) are flattened into whole numbers, the loss sum in fixed point (1/LOSS_SCALE of a nat), and
masked as the pooled class counts are (`services.common.secure_sum.pooled_counts`): the same X25519 agreements, in their own
HKDF domain, bound to the consortium, the key, the participant set and the evaluated model's digest, mod
2^COUNT_BITS. Over the whole set the masks cancel; over any proper subset one stays, and the values are uniform.

The scope holds no round id: a model evaluated once is answered again, under another round id, with the very same
masked values, and a hospital answers one participant set per model (the node's rule), so that the same counts
pooled over two sets, whose difference would be one hospital's counts, never exist for one model.

A masked report is bounded only by its field width: a hostile member can shift the pooled counts (within what
decodes as counts) or spoil them (then the model is not evaluated); it can never see another hospital's counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport
from services.common.secure_sum.pairwise_masks import MaskScope, PeerMask, mask_values
from services.common.secure_sum.pooled_counts import COUNT_BITS, PLAUSIBLE_COUNT, PooledCountsError

EVALUATION_DOMAIN = b"fedxray.v1/evaluation-mask"
LOSS_SCALE = 256
HEADER = 3  # examples, loss sum in fixed point, calibrated (1 when the calibration histograms count a split)
MODULUS = 1 << COUNT_BITS


def evaluation_scope(consortium: str, key_id: str, participants: Sequence[str], model_sha256: bytes) -> MaskScope:
    """What a hospital's evaluation masks are bound to: no round and no attempt, the model's digest instead."""
    return MaskScope(consortium, key_id, 0, 0, tuple(sorted(participants)), model_sha256)


def vector_length(num_classes: int, bins: int) -> int:
    return HEADER + num_classes * num_classes + 4 * num_classes * bins


def evaluation_vector(report: EvaluationReport) -> np.ndarray:
    """The report's counts as whole numbers, in the order `pooled_report` reads them back."""
    counts = report.counts
    if not (math.isfinite(counts.loss_sum) and counts.loss_sum >= 0):
        raise ValueError(f"a loss sum of {counts.loss_sum!r} has no fixed-point form")
    zeros = np.zeros_like(counts.positive_histograms)
    calibrated = report.calibration_positive is not None and report.calibration_negative is not None
    parts = [np.array([counts.examples, round(counts.loss_sum * LOSS_SCALE), int(calibrated)], dtype=np.int64),
             counts.confusion, counts.positive_histograms, counts.negative_histograms,
             report.calibration_positive if calibrated else zeros,
             report.calibration_negative if calibrated else zeros]
    vector = np.concatenate([np.asarray(part, dtype=np.int64).reshape(-1) for part in parts])
    if (vector < 0).any() or (vector >= PLAUSIBLE_COUNT).any():
        raise ValueError("evaluation counts must be whole numbers in [0, 2^40)")
    return vector


def mask_report(report: EvaluationReport, masks: Sequence[PeerMask]) -> tuple[int, ...]:
    """The report's counts plus this hospital's evaluation masks, mod 2^COUNT_BITS."""
    vector = evaluation_vector(report)
    masked = np.mod(vector + mask_values(masks, 0, vector.size, COUNT_BITS), MODULUS)
    return tuple(int(value) for value in masked)


def pooled_report(masked: Mapping[str, Sequence[int]], participants: Sequence[str], num_classes: int,
                  *, bins: int, model_round: int) -> tuple[EvaluationReport, int]:
    """The set's counts summed, as one report, and how many of its hospitals counted a calibration split: from
    every participant's masked values (their masks cancel only over the whole set)."""
    if set(masked) != set(participants):
        raise PooledCountsError(f"masked evaluations from {sorted(masked)}, participants {sorted(participants)}: "
                                "the masks cancel only over the whole participant set")
    length = vector_length(num_classes, bins)
    total = np.zeros(length, dtype=np.int64)
    for node, values in masked.items():
        vector = np.asarray(values, dtype=np.uint64)
        if vector.size != length or (vector >= MODULUS).any():
            raise PooledCountsError(f"{node} sent {vector.size} masked evaluation values, or values outside "
                                    f"[0, 2^{COUNT_BITS}); {length} are expected")
        total = np.mod(total + vector.astype(np.int64), MODULUS)
    if (total >= PLAUSIBLE_COUNT).any():
        raise PooledCountsError("the pooled evaluation counts are no counts: a participant's masks or counts were "
                                "not made for this participant set and model")
    examples, loss, calibrated = (int(v) for v in total[:HEADER])
    square = num_classes * num_classes
    confusion = total[HEADER:HEADER + square].reshape(num_classes, num_classes)
    rest = total[HEADER + square:].reshape(4, num_classes, bins)
    counts = EvaluationCounts(confusion, loss / LOSS_SCALE, examples, rest[0], rest[1])
    if calibrated == len(participants):
        return EvaluationReport("pooled", model_round, counts, rest[2], rest[3]), calibrated
    return EvaluationReport("pooled", model_round, counts), calibrated
