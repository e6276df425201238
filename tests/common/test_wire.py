"""The wire edge: typed objects survive the trip through protobuf, and a message that cannot become one is refused."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from services.common.errors import MalformedChunkError
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport, MaskedEvaluationReport
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import (
    ModelChunk,
    RoundKind,
    RoundPlan,
    SumLayout,
    TrainingFinished,
)
from services.common.protocol.upload import Attestation, DecryptManifest, PhaseSeconds, RecordPrivacySpent, UploadChunk
from services.common.protocol.wire import (
    evaluation_from_wire,
    evaluation_to_wire,
    field_values_from_wire,
    field_values_to_wire,
    manifest_from_wire,
    manifest_to_wire,
    plan_digest,
    plan_from_wire,
    plan_to_wire,
    public_key_from_wire,
    public_key_to_wire,
    round_message_from_wire,
    round_message_to_wire,
    upload_chunk_from_wire,
    upload_chunk_to_wire,
)
from services.common.secure_sum.masked_evaluation import vector_length
from services.common.secure_sum.packing import FieldLayout
from tests.plans import PLAN

ATTESTATION = Attestation("hospital-1", 7, "0123456789abcdef", 2, b"d" * 32, b"s" * 64, SumLayout.UPDATE, 2,
                          b"p" * 32, 1000, 8)


def test_a_round_plan_survives_the_wire_exactly() -> None:
    assert plan_from_wire(plan_to_wire(PLAN)) == PLAN
    statistics = replace(PLAN, kind=RoundKind.HEAD_STATISTICS, layout=FieldLayout(37, 8, 1),
                         quantization=replace(PLAN.quantization, bits=37))
    assert plan_from_wire(plan_to_wire(statistics)) == statistics
    assert plan_from_wire(plan_to_wire(statistics)).sum_layout is SumLayout.STATISTICS
    for trainable in ("head", "last_block", "all"):
        partial = replace(PLAN, training=replace(PLAN.training, trainable=trainable))
        assert plan_from_wire(plan_to_wire(partial)).training.trainable == trainable


def test_what_a_round_trains_is_signed_with_its_plan() -> None:
    head = replace(PLAN, training=replace(PLAN.training, trainable="head"))
    assert plan_digest(head) != plan_digest(PLAN)


def test_every_round_message_survives_the_wire() -> None:
    for message in (PLAN, ModelChunk(7, 3, b"\x00\x01"), TrainingFinished(4)):
        assert round_message_from_wire(round_message_to_wire(message)) == message


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: setattr(p, "kind", pb.ROUND_KIND_UNSPECIFIED), "no known kind"),
    (lambda p: setattr(p.training, "optimizer", "lbfgs"), "unknown local optimizer"),
    (lambda p: setattr(p.codec, "layout", pb.SUM_LAYOUT_STATISTICS), "another layout than its kind"),
    (lambda p: setattr(p.codec, "layout", 9), "unknown sum layout"),
    (lambda p: setattr(p.codec, "noise_kind", "gaussian"), "invalid codec"),
    (lambda p: setattr(p.codec, "fields_per_slot", 0), "invalid codec"),
    (lambda p: setattr(p.codec, "bits", 0), "invalid codec"),
    (lambda p: setattr(p.training, "trainable", "backbone"), "trains 'backbone'"),
])
def test_a_plan_that_cannot_be_typed_is_refused_by_name(change: object, message: str) -> None:
    wire = plan_to_wire(PLAN)
    change(wire)  # type: ignore[operator]
    with pytest.raises(MalformedChunkError, match=message):
        plan_from_wire(wire)


def test_an_upload_chunk_and_its_attestation_survive_the_wire() -> None:
    last = UploadChunk(7, "k", "hospital-1", 1, (b"c1", b"c2"), attestation=ATTESTATION,
                       phases=PhaseSeconds(1.0, 0.5, 2.0, 0.25), attempt=2)
    assert upload_chunk_from_wire(upload_chunk_to_wire(last)) == last
    plain = UploadChunk(7, "k", "hospital-1", 0, plaintext_values=b"\x00" * 8)
    assert upload_chunk_from_wire(upload_chunk_to_wire(plain)) == plain


@pytest.mark.parametrize("unit", ["patient", "image"])
def test_a_record_epsilon_keeps_its_unit_and_its_rdp_bound_on_the_wire(unit: str) -> None:
    spent = RecordPrivacySpent(7.9, 1e-5, 1.2, unit, 9.4)
    chunk = UploadChunk(7, "k", "hospital-1", 1, (b"c",), attestation=ATTESTATION, record_privacy=spent)
    assert upload_chunk_from_wire(upload_chunk_to_wire(chunk)).record_privacy == spent


def test_a_record_epsilon_of_an_unknown_unit_is_refused() -> None:
    chunk = UploadChunk(7, "k", "hospital-1", 1, (b"c",), attestation=ATTESTATION,
                        record_privacy=RecordPrivacySpent(7.9, 1e-5, 1.2, "household", 9.4))
    with pytest.raises(MalformedChunkError, match="per 'household'"):
        upload_chunk_from_wire(upload_chunk_to_wire(chunk))


def test_a_manifest_and_the_public_key_survive_the_wire() -> None:
    manifest = DecryptManifest(7, "k", 2, 1000, (ATTESTATION,), SumLayout.UPDATE, 2, ("hospital-1", "hospital-2"), 8)
    assert manifest_from_wire(manifest_to_wire(manifest)) == manifest
    key = PublicKeyInfo(b"context", "k", FieldLayout(10, 8, 3), FieldLayout(37, 8, 1), 4096, 3)
    assert public_key_from_wire(public_key_to_wire(key)) == key


def test_field_values_survive_the_wire_and_a_short_answer_is_refused() -> None:
    fields = np.array([0, 1, 1023], dtype="<u4")
    assert field_values_from_wire(field_values_to_wire(0, fields)).tolist() == [0, 1, 1023]
    short = field_values_to_wire(0, fields)
    short.value_count = 4
    with pytest.raises(MalformedChunkError, match="carries 3 of 4"):
        field_values_from_wire(short)


def test_an_evaluation_report_survives_the_wire_with_and_without_calibration() -> None:
    rng = np.random.default_rng(0)
    counts = EvaluationCounts(rng.integers(0, 9, (2, 2)), 3.5, 12, rng.integers(0, 9, (2, 100)),
                              rng.integers(0, 9, (2, 100)))
    for report in (EvaluationReport("hospital-2", 4, counts),
                   EvaluationReport("hospital-2", 4, counts, rng.integers(0, 9, (2, 100)),
                                    rng.integers(0, 9, (2, 100)))):
        back = evaluation_from_wire(evaluation_to_wire(report))
        assert isinstance(back, EvaluationReport)
        assert (back.node_id, back.model_round, back.histogram_spacing) == ("hospital-2", 4, "logit")
        assert np.array_equal(back.counts.confusion, counts.confusion)
        assert np.array_equal(back.counts.negative_histograms, counts.negative_histograms)
        assert (back.calibration_positive is None) == (report.calibration_positive is None)


def test_a_masked_evaluation_survives_the_wire_and_a_malformed_one_is_refused_by_name() -> None:
    values = tuple(range(vector_length(2, 100)))
    report = MaskedEvaluationReport("hospital-2", 4, 2, 100, ("hospital-1", "hospital-2", "hospital-3"), values)
    assert evaluation_from_wire(evaluation_to_wire(report)) == report
    message = evaluation_to_wire(report)
    for change, match in ((lambda m: m.confusion.extend([1, 0, 0, 1]), "masked and plain"),
                          (lambda m: setattr(m, "examples", 2), "masked and plain"),
                          (lambda m: m.masked_counts.append(7), "holds 808 values"),
                          (lambda m: m.masked_for.remove("hospital-2"), "a set without it"),
                          (lambda m: m.masked_for.append("hospital-1"), "a member twice")):
        bad = type(message)()
        bad.CopyFrom(message)
        change(bad)
        with pytest.raises(MalformedChunkError, match=match):
            evaluation_from_wire(bad)
