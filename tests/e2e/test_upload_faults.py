"""Broken, malformed, replayed and forged submissions change no sum and get a clear status."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.node_identity import NodeKeyRegistry, load_agreement_key, load_identity
from services.common.protocol.round_plan import RoundPlan
from services.common.protocol.wire import plan_from_wire, public_key_from_wire, upload_chunk_to_wire
from services.hospital_node.data.synthetic_xray import synthetic_class_names
from services.hospital_node.encryption_pool import EncryptionPool
from services.hospital_node.update_stream import (
    UploadTimings,
    attempt_scope,
    masked_recipe,
    secure_upload,
)
from tests.e2e.consortium_checks import field_sum, node_fields, recording, scrape, tiny_config


def test_node_killed_mid_upload_adds_nothing_and_the_round_completes(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config(tmp_path, 5, 1, images_per_node=30, seed=3,
                         hooks=recording(tmp_path, fault_exit_after_chunks=1, fault_node="hospital-5"),
                         aggregator={"chunk_ciphertexts": 1, "linger_seconds": 600})
    with Consortium(config) as consortium:
        code = consortium.wait(300)
        crashed = consortium.services["hospital-5"].process.wait(timeout=30)
        # The aggregator lingers after training, so its counters can be read at the end.
        refusals = scrape(consortium.services["aggregator"].metrics_port)
    assert code == 0
    assert crashed == 17  # the fault hook's exit status: it really died mid-stream
    row = next(r for r in consortium.rows() if r["round"] == 1)
    survivors = consortium.node_ids[:4]
    assert row["participants"] == 4 and sorted(row["contributors"]) == survivors
    records = tmp_path / "records"
    expected = np.sum([node_fields(records, node, 1) for node in survivors], axis=0) % (1 << 10)
    assert np.array_equal(field_sum(tmp_path, 1), expected)
    assert refusals.get('fedxray_refused_requests_total{reason="broken_stream"}', 0) >= 1
    assert refusals.get('fedxray_refused_requests_total{reason="malformed_chunk"}', 0) == 0  # not a truncation
    # It died mid-upload: part of its stream had arrived.
    broke_off = re.findall(r"stream of node 'hospital-5' broke off after (\d+) bytes",
                           (consortium.logs / "aggregator.log").read_text())
    assert broke_off and int(broke_off[0]) > 0
    assert not list((tmp_path / "aggregator" / "staging").glob("*"))


class IntruderNode:
    """The test's own node: a registered member that also tries every bad submission."""

    def __init__(self, consortium: Consortium, node_id: str) -> None:
        self.node_id = node_id
        self.aggregator = pb_grpc.AggregatorStub(consortium.channel_as(node_id, "aggregator"))
        self.key_authority = pb_grpc.KeyAuthorityStub(consortium.channel_as(node_id, "key_authority"))
        state = build_model("tiny", 2, 0).state_dict()
        self.spec = parameter_spec(state)
        self.weights = flatten_state(state)
        self.identities = consortium.identities
        self.identity = load_identity(consortium.identities / f"{node_id}.key")
        self.agreement = load_agreement_key(consortium.identities / f"{node_id}.key")
        self.metrics_port = consortium.services["aggregator"].metrics_port
        self.stream: Iterator[pb.RoundMessage] | None = None

    def join(self) -> RoundPlan:
        self.stream = self.aggregator.Subscribe(pb.JoinRequest(
            node_id=self.node_id, parameter_count=self.spec.count, parameter_digest=self.spec.digest,
            class_names=list(synthetic_class_names(2))), wait_for_ready=True)
        plan = plan_from_wire(next(self.stream).plan)
        for _ in range(plan.model.chunk_count):
            next(self.stream)
        return plan

    def leave(self) -> None:
        """Disconnect, so the aggregator does not wait for this node's evaluations."""
        assert self.stream is not None
        self.stream.cancel()  # type: ignore[attr-defined]

    def honest_chunks(self, plan: RoundPlan, record: list[np.ndarray]) -> list[pb.UpdateChunk]:
        """An upload made as a real node makes it: masked for the plan's set, and with the key authority."""
        public = public_key_from_wire(self.key_authority.GetPublicContext(pb.GetPublicContextRequest(), timeout=30))
        update = np.random.default_rng(11).normal(0, 1e-3, self.spec.count)
        peers = NodeKeyRegistry.from_directory(self.identities).agreement_keys
        recipe = masked_recipe(plan, self.node_id, self.agreement, peers=peers, public=public,
                               scope=attempt_scope("fedxray", plan),
                               seed=np.random.SeedSequence(5))
        with EncryptionPool(public.context, workers=0) as pool:
            return [upload_chunk_to_wire(chunk) for chunk in secure_upload(
                plan, update, self.node_id, key=self.identity, pool=pool, recipe=recipe, timings=UploadTimings(),
                record=record)]

    def break_off_before_the_first_chunk(self) -> None:
        """Open an upload, send nothing, and cancel it: the aggregator counts a broken stream."""
        release = threading.Event()

        def nothing() -> Iterator[pb.UpdateChunk]:
            release.wait(30)
            yield from ()

        call = self.aggregator.SubmitUpdate.future(nothing(), timeout=60)
        # Cancel only once the aggregator's handler holds the call and waits for a first chunk: cancelled before
        # its headers arrived, nothing would be counted.
        deadline = time.monotonic() + 30
        while scrape(self.metrics_port).get("fedxray_upload_streams_open", 0) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        call.cancel()
        release.set()
        # The node's one upload slot is free again once the aggregator's handler has seen the cancellation.
        deadline = time.monotonic() + 30
        while scrape(self.metrics_port).get("fedxray_upload_streams_open", 0) > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert call.cancelled() and call.code() == grpc.StatusCode.CANCELLED

    def submit(self, chunks: list[pb.UpdateChunk]) -> grpc.StatusCode:
        try:
            self.aggregator.SubmitUpdate(iter(chunks), timeout=60)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def _copy(chunk: pb.UpdateChunk, **changes: object) -> pb.UpdateChunk:
    changed = pb.UpdateChunk()
    changed.CopyFrom(chunk)
    for name, value in changes.items():
        if name == "ciphertexts":
            del changed.ciphertexts[:]
            changed.ciphertexts.extend(value)  # type: ignore[arg-type]
        else:
            setattr(changed, name, value)
    return changed


def test_bad_submissions_are_refused_with_named_statuses_and_leave_the_sum_exact(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = tiny_config(tmp_path, 3, 1, images_per_node=30, seed=5, hooks=recording(tmp_path),
                         extra_members=["hospital-4"], aggregator={"chunk_ciphertexts": 1, "expected_participants": 4})
    with Consortium(config) as consortium:
        intruder = IntruderNode(consortium, "hospital-4")
        plan = intruder.join()
        record: list[np.ndarray] = []
        good = intruder.honest_chunks(plan, record)
        assert len(good) >= 2
        forged_signature = _copy(good[-1])
        forged_signature.attestation.signature = load_identity(consortium.identities / "hospital-1.key").sign(b"x")
        refused = {
            "malformed ciphertext": intruder.submit([_copy(good[0], ciphertexts=[b"not a ciphertext"])] + good[1:]),
            "wrong key id": intruder.submit([_copy(c, key_id="0" * 16) for c in good]),
            "wrong round": intruder.submit([_copy(c, round_id=plan.round_id + 7) for c in good]),
            "claims another identity": intruder.submit([_copy(c, node_id="mallory") for c in good]),
            "out of order": intruder.submit(good[1:] + good[:1]),
            "truncated stream": intruder.submit(good[:-1]),
            "forged signature": intruder.submit(good[:-1] + [forged_signature]),
        }
        assert refused == {
            "malformed ciphertext": grpc.StatusCode.INVALID_ARGUMENT,
            "wrong key id": grpc.StatusCode.FAILED_PRECONDITION,
            "wrong round": grpc.StatusCode.FAILED_PRECONDITION,
            "claims another identity": grpc.StatusCode.PERMISSION_DENIED,  # mTLS: the certificate names hospital-4
            "out of order": grpc.StatusCode.INVALID_ARGUMENT,
            "truncated stream": grpc.StatusCode.INVALID_ARGUMENT,
            "forged signature": grpc.StatusCode.INVALID_ARGUMENT,
        }
        intruder.break_off_before_the_first_chunk()
        assert intruder.submit(good) == grpc.StatusCode.OK
        assert intruder.submit(good) == grpc.StatusCode.ALREADY_EXISTS  # a replay
        # An evaluation with bins evenly spaced in probability (no spacing named) must not be pooled.
        old_layout = pb.EvaluationReport(node_id="hospital-4", model_round=0, num_classes=2, histogram_bins=100,
                                         confusion=[1, 0, 0, 1], positive_histograms=[0] * 200,
                                         negative_histograms=[0] * 200)
        with pytest.raises(grpc.RpcError) as refused_report:
            intruder.aggregator.ReportEvaluation(old_layout, timeout=10)
        assert refused_report.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "histogram spacing" in (refused_report.value.details() or "")
        # Fake counts from a member that never evaluated: 2e12 images (once pooled, they made the accuracy 1e-11),
        # and a NaN loss. Both refused by name; the pooled row below holds the honest nodes' counts only.
        bins = [0] * 50 + [1] + [0] * 49

        def fake(examples: int, loss: float) -> pb.EvaluationReport:
            half = examples // 2
            return pb.EvaluationReport(
                node_id="hospital-4", model_round=0, num_classes=2, histogram_bins=100, histogram_spacing="logit",
                confusion=[half, 0, 0, half], examples=examples, loss_sum=loss,
                positive_histograms=[b * half for b in bins] * 2, negative_histograms=[b * half for b in bins] * 2)

        for report, message in ((fake(2_000_000_000_000, 1.0), "above the bound"),
                                (fake(8, float("nan")), "not a finite number")):
            with pytest.raises(grpc.RpcError) as refused_fake:
                intruder.aggregator.ReportEvaluation(report, timeout=10)
            assert refused_fake.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert message in (refused_fake.value.details() or "")
        # The aggregator counts the broken stream when its handler sees the cancellation, which can come after the
        # calls above have returned: read the counters until every refusal is in, for at most 15 s.
        expected_reasons = {f'fedxray_refused_requests_total{{reason="{r}"}}' for r in
                            ("malformed_chunk", "wrong_key", "wrong_round", "identity_mismatch", "digest_mismatch",
                             "duplicate_submission", "broken_stream")}
        deadline = time.monotonic() + 15
        while True:
            samples = scrape(consortium.services["aggregator"].metrics_port)
            reasons = {k for k, v in samples.items() if k.startswith("fedxray_refused_requests_total{") and v > 0}
            if expected_reasons <= reasons or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        intruder.leave()
        code = consortium.wait(300)
    assert code == 0
    row = next(r for r in consortium.rows() if r["round"] == 1)
    assert row["participants"] == 4
    # The honest nodes masked their evaluation of the initial model for round 1's set, the intruder among them; it
    # sent no masked report, so the three do not pool (the masks cancel over the whole set only), and its fake plain
    # ones were refused: the row holds no evaluation, never one the fakes moved.
    initial = next(r for r in consortium.rows() if r["round"] == 0)
    assert initial["evaluation"] is None and "evaluation_shared" not in initial
    honest = [node_fields(tmp_path / "records", node, 1) for node in consortium.node_ids]
    expected = (np.sum(honest, axis=0) + np.concatenate(record).astype(np.int64)) % (1 << 10)
    assert np.array_equal(field_sum(tmp_path, 1), expected)
    assert expected_reasons <= reasons


def test_plaintext_mode_runs_the_same_services_and_averages_exactly(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.e2e.consortium_checks import checkpoint_weights, node_update

    config = tiny_config(tmp_path, 3, 1, images_per_node=30, seed=9, hooks=recording(tmp_path),
                         settings={"secure": False, "allow_plaintext": True})
    with Consortium(config) as consortium:
        code = consortium.wait(300)
    assert code == 0
    row = next(r for r in consortium.rows() if r["round"] == 1)
    assert row["participants"] == 3 and row["epsilon"] in (float("inf"), "Infinity")
    updates = [node_update(tmp_path / "records", node, 1) for node in consortium.node_ids]
    expected = checkpoint_weights(tmp_path, 0) + np.mean([u.astype(np.float32) for u in updates], axis=0)
    np.testing.assert_allclose(checkpoint_weights(tmp_path, 1), expected, rtol=1e-5, atol=1e-6)
    assert not (tmp_path / "records" / "round_0001_field_sum.npy").exists()  # nothing was decrypted
