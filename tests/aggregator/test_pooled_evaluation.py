import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.pooled_evaluation import pool_reports, validate_report
from services.common.errors import MalformedChunkError
from services.common.ml.classification_metrics import HISTOGRAM_BINS, HISTOGRAM_SPACING, histogram_edges
from services.common.ml.evaluation_report import EvaluationReport
from services.common.protocol.wire import evaluation_from_wire


def _rows(first: int, second: int) -> list[int]:
    """Two classes' histograms, every image in bin 50: class 0's row counts `first`, class 1's `second`."""
    return [first if i == 50 else 0 for i in range(HISTOGRAM_BINS)] + [second if i == 50 else 0
                                                                       for i in range(HISTOGRAM_BINS)]


def report(node: str, **changes: object) -> EvaluationReport:
    """A report as the aggregator's wire edge turns it into a typed one (where lengths are checked first)."""
    return evaluation_from_wire(wire_report(node, **changes))


def wire_report(node: str, **changes: object) -> pb.EvaluationReport:
    fields: dict[str, object] = dict(
        node_id=node, model_round=1, num_classes=2, confusion=[3, 1, 2, 4], loss_sum=1.0, examples=10,
        positive_histograms=_rows(4, 6), negative_histograms=_rows(6, 4),
        histogram_bins=HISTOGRAM_BINS, histogram_spacing=HISTOGRAM_SPACING)
    fields.update(changes)
    return pb.EvaluationReport(**fields)  # type: ignore[arg-type]


def test_a_well_formed_report_is_accepted_and_pooled() -> None:
    validate_report(report("a"), num_classes=2)
    pooled = pool_reports([report("a"), report("b")])
    assert pooled.confusion.tolist() == [[6, 2], [4, 8]]


@pytest.mark.parametrize(("changes", "message"), [
    ({"histogram_spacing": ""}, "histogram spacing"),
    ({"num_classes": 3}, "3 classes"),
    ({"confusion": [1, 2, 3]}, "wrong length"),
    ({"positive_histograms": [0] * 7}, "wrong length"),
])
def test_a_report_that_cannot_be_pooled_is_refused_by_name(changes: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedChunkError, match=message):
        validate_report(report("a", **changes), num_classes=2)  # the wire edge or the board refuses it


@pytest.mark.parametrize(("changes", "message"), [
    ({"examples": 2_000_000_000_000, "confusion": [1_000_000_000_000, 0, 0, 1_000_000_000_000]}, "above the bound"),
    ({"loss_sum": float("nan")}, "not a finite number"),
    ({"loss_sum": float("inf")}, "not a finite number"),
    ({"loss_sum": -1.0}, "not a finite number"),
    ({"examples": 11}, "inconsistent"),
    ({"confusion": [3, 1, 2, 5]}, "inconsistent"),
    ({"positive_histograms": _rows(4, 7)}, "inconsistent"),
    ({"negative_histograms": _rows(5, 4)}, "inconsistent"),
], ids=["huge", "nan-loss", "inf-loss", "negative-loss", "examples", "confusion", "positives", "negatives"])
def test_fake_evaluation_counts_are_refused(changes: dict[str, object], message: str) -> None:
    """A member that never trained invents counts (2e12 images once made the pooled accuracy 1e-11)."""
    with pytest.raises(MalformedChunkError, match=message):
        validate_report(report("a", **changes), num_classes=2)  # the wire edge or the board refuses it


def _histogram(counts: dict[int, int], class_0: int = 0) -> list[int]:
    """Class-1 histogram with the given bins filled; class 0's row holds `class_0` images in bin 50."""
    row = [0] * HISTOGRAM_BINS
    for index, count in counts.items():
        row[index] = count
    return [class_0 if i == 50 else 0 for i in range(HISTOGRAM_BINS)] + row


def test_pooled_calibration_histograms_choose_the_threshold_applied_to_the_evaluated_counts() -> None:
    edges = histogram_edges()
    # Calibration, pooled over two hospitals: positives score in bin 60, negatives in bins 30 and 70 (one
    # each). Calling bins >= 61 positive catches nothing; >= 31 catches 2 TP + 1 FP (F1 0.8); >= 71: 0.
    # The best F1 (0.8) is edges 31..60; ties go to the highest, edge 60.
    calibration = [(_histogram({60: 1}), _histogram({30: 1})), (_histogram({60: 1}), _histogram({70: 1}))]
    # Evaluated: positives in bins 55 and 65, negatives in bin 20; argmax (edge 50) calls both positives.
    reports = [report(node, positive_histograms=_histogram({55: 1, 65: 1}, 2), negative_histograms=_histogram({20: 2}, 2),
                      confusion=[2, 0, 0, 2], examples=4,
                      calibration_positive_histograms=cal_pos, calibration_negative_histograms=cal_neg)
               for node, (cal_pos, cal_neg) in zip("ab", calibration)]
    for r in reports:
        validate_report(r, num_classes=2)
    pooled = pool_reports(reports)
    assert pooled.calibrated is not None
    assert pooled.calibrated.threshold == edges[60]
    assert pooled.calibrated.calibration_f1 == pytest.approx(0.8)
    # At edge 60, of the evaluated images: the two bin-65 positives are called, the bin-55 ones missed.
    assert pooled.calibrated.confusion.tolist() == [[4, 0], [2, 2]]
    row = pooled.as_dict()["calibrated"]
    assert isinstance(row, dict) and row["f1"] == pytest.approx(4 / 6) and row["threshold"] == edges[60]


def test_no_operating_point_unless_every_hospital_sent_calibration_counts() -> None:
    with_calibration = report("a", calibration_positive_histograms=_histogram({60: 1}),
                              calibration_negative_histograms=_histogram({30: 1}))
    assert pool_reports([with_calibration]).calibrated is not None
    assert pool_reports([with_calibration, report("b")]).calibrated is None
    assert "calibrated" not in pool_reports([report("a")]).as_dict()


def test_calibration_histograms_of_the_wrong_length_are_refused_by_name() -> None:
    with pytest.raises(MalformedChunkError, match="calibration histograms"):
        validate_report(report("a", calibration_positive_histograms=[0] * 7,
                               calibration_negative_histograms=[0] * 7), num_classes=2)
