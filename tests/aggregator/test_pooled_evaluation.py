import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.aggregator.pooled_evaluation import pool_reports, validate_report
from services.common.classification_metrics import HISTOGRAM_BINS, HISTOGRAM_SPACING
from services.common.errors import MalformedChunkError


def report(node: str, **changes: object) -> pb.EvaluationReport:
    fields: dict[str, object] = dict(
        node_id=node, model_round=1, num_classes=2, confusion=[3, 1, 2, 4], loss_sum=1.0, examples=10,
        positive_histograms=[0] * (2 * HISTOGRAM_BINS), negative_histograms=[0] * (2 * HISTOGRAM_BINS),
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
        validate_report(report("a", **changes), num_classes=2)
