"""Evaluation through the secure sum: each hospital's counts masked, readable only summed over the whole set."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from services.common.ml.classification_metrics import HISTOGRAM_BINS
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport
from services.common.secure_sum.masked_evaluation import (
    COUNT_BITS,
    EVALUATION_DOMAIN,
    LOSS_SCALE,
    evaluation_scope,
    mask_report,
    pooled_report,
    vector_length,
)
from services.common.secure_sum.pairwise_masks import peer_masks
from services.common.secure_sum.pooled_counts import PooledCountsError
from tests.evaluations import histograms_for

pytestmark = pytest.mark.unit
NODES = ("hospital-1", "hospital-2", "hospital-3")
MODEL = bytes(32)


def _report(node: str, confusion: list[list[int]], loss: float, calibrated: bool = True) -> EvaluationReport:
    matrix = np.asarray(confusion, dtype=np.int64)
    counts = EvaluationCounts(matrix, loss, int(matrix.sum()), *histograms_for(matrix))
    if not calibrated:
        return EvaluationReport(node, 3, counts)
    positive, negative = histograms_for(matrix.T)  # other histograms than the evaluated images'
    return EvaluationReport(node, 3, counts, positive, negative)


REPORTS = {"hospital-1": _report("hospital-1", [[5, 1], [2, 7]], 6.125),
           "hospital-2": _report("hospital-2", [[0, 0], [0, 0]], 0.0),  # below its floor: counts nothing
           "hospital-3": _report("hospital-3", [[9, 3], [4, 11]], 17.3)}


def _masked(reports: dict[str, EvaluationReport], members: tuple[str, ...] = NODES,
            model: bytes = MODEL) -> dict[str, tuple[int, ...]]:
    keys = {node: X25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i, node in enumerate(NODES)}
    public = {node: key.public_key() for node, key in keys.items()}
    scope = evaluation_scope("fedxray", "key", members, model)
    return {node: mask_report(report, peer_masks(node, keys[node], public, scope=scope, domain=EVALUATION_DOMAIN))
            for node, report in reports.items()}


def test_the_masked_reports_of_the_whole_set_sum_to_the_pooled_counts() -> None:
    pooled, calibrated = pooled_report(_masked(REPORTS), NODES, 2, bins=HISTOGRAM_BINS, model_round=3)
    plain = list(REPORTS.values())
    np.testing.assert_array_equal(pooled.counts.confusion, sum(r.counts.confusion for r in plain))
    np.testing.assert_array_equal(pooled.counts.positive_histograms,
                                  sum(r.counts.positive_histograms for r in plain))
    np.testing.assert_array_equal(pooled.calibration_negative, sum(r.calibration_negative for r in plain))
    assert pooled.counts.examples == 42 and calibrated == 3
    # The loss sum in fixed point: within half a unit of 1/LOSS_SCALE per hospital.
    assert abs(pooled.counts.loss_sum - (6.125 + 17.3)) <= 3 / (2 * LOSS_SCALE)


def test_the_calibration_histograms_pool_only_when_every_hospital_counted_a_split() -> None:
    reports = {**REPORTS, "hospital-3": _report("hospital-3", [[9, 3], [4, 11]], 17.3, calibrated=False)}
    pooled, calibrated = pooled_report(_masked(reports), NODES, 2, bins=HISTOGRAM_BINS, model_round=3)
    assert calibrated == 2 and pooled.calibration_positive is None


def test_one_masked_report_is_uniform_whatever_its_counts() -> None:
    """Alone, a hospital's report says nothing: its values fill the field evenly (counts alone would all lie
    far below 2^47). Half of the values above 2^47, within 4.5 standard deviations."""
    for values in _masked(REPORTS).values():
        high = np.asarray(values, dtype=np.uint64) >= (1 << (COUNT_BITS - 1))
        assert len(values) == vector_length(2, HISTOGRAM_BINS)
        assert abs(high.mean() - 0.5) < 4.5 * 0.5 / np.sqrt(high.size)


@pytest.mark.parametrize("attack", ["subset", "another_model", "another_set"])
def test_masked_reports_never_pool_over_a_proper_subset_nor_across_models_or_sets(attack: str) -> None:
    """The aggregator can read a sum only over the whole set the reports were masked for, on that model: two
    hospitals' reports without the third's, or one hospital's report made for another model or another set, leave a
    mask, and the sum is no counts."""
    masked = _masked(REPORTS)
    members = NODES
    if attack == "subset":
        del masked["hospital-2"]
        members = NODES[:1] + NODES[2:]
    else:
        other = _masked({"hospital-3": REPORTS["hospital-3"]},
                        model=bytes([1]) * 32 if attack == "another_model" else MODEL,
                        members=NODES if attack == "another_model" else NODES[:1] + NODES[2:])
        masked["hospital-3"] = other["hospital-3"]
    with pytest.raises(PooledCountsError, match="no counts"):
        pooled_report(masked, members, 2, bins=HISTOGRAM_BINS, model_round=3)


def test_a_report_that_cannot_be_counted_is_refused_before_masking() -> None:
    report = REPORTS["hospital-1"]
    with pytest.raises(ValueError, match="fixed-point"):
        mask_report(EvaluationReport("hospital-1", 3, EvaluationCounts(report.counts.confusion, float("nan"), 15,
                                                                      report.counts.positive_histograms,
                                                                      report.counts.negative_histograms)), [])
