"""A malicious aggregator against the real key authority and five real hospital nodes, with real TenSEAL.

The test plays the aggregator: a gRPC server of its own, holding the aggregator's certificate, to which the five
node processes subscribe. It sends the plans it likes, keeps every upload, and asks the key authority to decrypt
what it likes. Every attack is refused with a named status, or its output is uniform over the field (chi-square
against the uniform distribution over 2^b values, p = 1e-4), which is statistically independent of every single
update. An honest round through the same harness decodes exactly, the control that the harness is a fair one.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import replace

import grpc
import numpy as np
import pytest
import tenseal as ts

from protos.fedxray.v1 import fedxray_pb2 as pb
from protos.fedxray.v1 import fedxray_pb2_grpc as pb_grpc
from scripts.launcher import Consortium, free_port
from services.aggregator.config import AggregatorSettings
from services.aggregator.pooled_evaluation import validate_report
from services.aggregator.round_planner import RoundPlanner, broadcast_chunks
from services.common.ml.evaluation_report import EvaluationReport
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.node_identity import load_identity
from services.common.protocol.round_plan import ModelChunk, RoundKind, RoundPlan
from services.common.protocol.upload import Attestation
from services.common.protocol.wire import (
    attestation_from_wire,
    attestation_to_wire,
    field_values_from_wire,
    plan_digest,
    public_key_from_wire,
    round_message_to_wire,
)
from services.common.runtime.tls import add_port
from services.common.secure_sum.ckks_params import load_public_context
from services.common.secure_sum.he_codec import RunningCiphertextSum
from services.common.secure_sum.masked_evaluation import pooled_report
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.packing import field_offset, to_centered
from services.common.secure_sum.pairwise_masks import participant_set_hash
from services.common.secure_sum.pooled_counts import PooledCountsError
from services.common.secure_sum.update_codec import sum_norm_bound
from tests.e2e.consortium_checks import tiny_config
from tests.statistics import chi_square_critical, chi_square_uniform

NODES = [f"hospital-{i}" for i in range(1, 6)]
EXTRA = [f"hospital-{i}" for i in range(6, 10)]  # registered members with no process: for a set above n_max
UNIFORM = 3.72  # the normal quantile of p = 1e-4


class HarnessAggregator(pb_grpc.AggregatorServicer):
    """The test's aggregator: it sends what it is told, keeps every upload and decline, and decides nothing."""

    def __init__(self) -> None:
        self.outboxes: dict[str, queue.Queue[pb.RoundMessage | None]] = {}
        self.uploads: dict[tuple[str, int, int], list[pb.UpdateChunk]] = {}
        self.declines: dict[tuple[str, int, int], str] = {}
        self.reports: dict[tuple[str, int], pb.EvaluationReport] = {}
        self.changed = threading.Condition()

    def Subscribe(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> Iterator[pb.RoundMessage]:
        outbox: queue.Queue[pb.RoundMessage | None] = queue.Queue()
        with self.changed:
            self.outboxes[request.node_id] = outbox
            self.changed.notify_all()
        while context.is_active():
            try:
                message = outbox.get(timeout=0.2)
            except queue.Empty:
                continue
            if message is None:
                return
            yield message

    def SubmitUpdate(self, request_iterator: Iterator[pb.UpdateChunk],
                     context: grpc.ServicerContext) -> pb.SubmitReceipt:
        chunks = list(request_iterator)
        first, last = chunks[0], chunks[-1]
        with self.changed:
            self.uploads[(first.node_id, first.round_id, first.attempt)] = chunks
            self.changed.notify_all()
        return pb.SubmitReceipt(round_id=first.round_id, chunks=len(chunks),
                                stream_digest=last.attestation.stream_digest)

    def ReportEvaluation(self, request: pb.EvaluationReport, context: grpc.ServicerContext) -> pb.EvaluationAck:
        with self.changed:
            self.reports[(request.node_id, request.model_round)] = request
            self.changed.notify_all()
        return pb.EvaluationAck()

    def DeclineRound(self, request: pb.RoundDecline, context: grpc.ServicerContext) -> pb.DeclineAck:
        with self.changed:
            self.declines[(request.node_id, request.round_id, request.attempt)] = request.reason
            self.changed.notify_all()
        return pb.DeclineAck()

    def send(self, plan: RoundPlan, model: list[bytes], to: list[str] | None = None) -> None:
        for node, outbox in list(self.outboxes.items()):
            if to is not None and node not in to:
                continue
            outbox.put(round_message_to_wire(plan))
            for index, values in enumerate(model):
                outbox.put(round_message_to_wire(ModelChunk(plan.round_id, index, values)))

    def wait(self, done: Callable[[], bool], timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done():
                assert time.monotonic() < deadline, "the nodes did not answer in time"
                self.changed.wait(0.5)


class Attack:
    """What the harness holds: the nodes' uploads, the public key, an honest planner, and a line to the key
    authority with the aggregator's certificate."""

    def __init__(self, consortium: Consortium, harness: HarnessAggregator) -> None:
        self.consortium, self.harness = consortium, harness
        self.stub = pb_grpc.KeyAuthorityStub(consortium.channel_as("aggregator", "key_authority"))
        self.key = public_key_from_wire(self.stub.GetPublicContext(pb.GetPublicContextRequest(), timeout=60))
        self.context = load_public_context(self.key.context)
        model = build_model("tiny", 2, 0)
        self.spec = parameter_spec(model.state_dict())
        self.weights = flatten_state(model.state_dict())
        self.model = broadcast_chunks(self.weights)
        settings = AggregatorSettings(insecure=True, architecture="tiny", clip_norm=5.0, noise_variance=16.0,
                                      chunk_ciphertexts=8)
        self.planner = RoundPlanner(settings, self.key, self.spec, upload_dimension=self.spec.count,
                                    statistics_dimension=1)

    def model_for(self, round_id: int) -> list[bytes]:
        """Round `round_id`'s model: a new one each round, as an honest run's (the key authority decrypts one
        participant set per model, so rounds on one model with different sets would be refused)."""
        return broadcast_chunks(self.weights + 1e-4 * round_id)

    def plan(self, round_id: int, participants: list[str], attempt: int = 1, **changes: object) -> RoundPlan:
        plan = self.planner.plan(round_id, RoundKind.TRAIN, self.model_for(round_id), attempt=attempt,
                                 participants=frozenset(participants))
        return replace(plan, **changes)

    def uploads_of(self, plan: RoundPlan, nodes: list[str], to: list[str] | None = None
                   ) -> dict[str, list[pb.UpdateChunk]]:
        """Send `plan` (to the nodes `to`, or every node) and wait for the uploads of `nodes`."""
        self.harness.send(plan, self.model_for(plan.round_id), to)
        keys = [(node, plan.round_id, plan.attempt) for node in nodes]
        self.harness.wait(lambda: all(k in self.harness.uploads for k in keys))
        return {node: self.harness.uploads[(node, plan.round_id, plan.attempt)] for node in nodes}

    def summed(self, uploads: list[list[pb.UpdateChunk]]) -> list[list[bytes]]:
        total = RunningCiphertextSum(self.context, len(uploads[0]))
        for chunks in uploads:
            for chunk in chunks:
                total.fold(chunk.index, total.parse_chunk(chunk.index, list(chunk.ciphertexts)))
        return [total.serialized_chunk(i) for i in range(total.chunk_count)]

    def manifest(self, plan: RoundPlan, attestations: list[pb.Attestation], participants: list[str],
                 **changes: object) -> pb.DecryptManifest:
        manifest = pb.DecryptManifest(round_id=plan.round_id, key_id=plan.key_id,
                                      chunk_count=plan.transfer.chunk_count, value_count=plan.upload_value_count,
                                      attestations=attestations, layout=pb.SUM_LAYOUT_UPDATE, attempt=plan.attempt,
                                      participants=participants, chunk_ciphertexts=plan.transfer.chunk_ciphertexts,
                                      plan_sha256=plan_digest(plan))
        for name, value in changes.items():
            setattr(manifest, name, value)
        return manifest

    def decrypt(self, manifest: pb.DecryptManifest, chunks: list[list[bytes]]) -> np.ndarray:
        requests = [pb.DecryptRequest(manifest=manifest)] + [
            pb.DecryptRequest(chunk=pb.CiphertextChunk(index=i, ciphertexts=c)) for i, c in enumerate(chunks)]
        return np.concatenate([field_values_from_wire(r) for r in self.stub.Decrypt(iter(requests), timeout=120)])

    def refusal(self, manifest: pb.DecryptManifest, chunks: list[list[bytes]]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as refused:
            self.decrypt(manifest, chunks)
        return refused.value.code(), refused.value.details() or ""


def _attestations(uploads: dict[str, list[pb.UpdateChunk]]) -> list[pb.Attestation]:
    return [chunks[-1].attestation for chunks in uploads.values()]


@pytest.fixture(scope="module")
def attack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Attack]:
    run_dir = tmp_path_factory.mktemp("malicious")
    harness = HarnessAggregator()
    address = f"127.0.0.1:{free_port()}"
    config = tiny_config(run_dir, len(NODES), 1, seed=11, images_per_node=30, external_aggregator=address,
                         extra_members=EXTRA, node={"max_attempts": 2, "min_validation_images": 5},
                         per_node={4: {"max_learning_rate": 1e31}})
    consortium = Consortium(config)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    pb_grpc.add_AggregatorServicer_to_server(harness, server)
    with consortium:
        add_port(server, address, consortium.tls_for("aggregator"))
        server.start()
        try:
            harness.wait(lambda: set(NODES) <= set(harness.outboxes))
            yield Attack(consortium, harness)
        finally:
            for outbox in harness.outboxes.values():
                outbox.put(None)
            server.stop(grace=1)


def _uniform(fields: np.ndarray, bits: int) -> bool:
    return chi_square_uniform(fields, 1 << bits) < chi_square_critical(1 << bits, z=UNIFORM)


def test_one_nodes_ciphertexts_presented_as_the_sum_decrypt_to_uniform_noise(attack: Attack) -> None:
    plan = attack.plan(1, NODES)
    uploads = attack.uploads_of(plan, NODES)
    only_one = attack.summed([uploads["hospital-1"]])
    fields = attack.decrypt(attack.manifest(plan, _attestations(uploads), NODES), only_one)
    assert fields.size == plan.upload_value_count and _uniform(fields, plan.layout.bits)


def test_a_proper_subsets_sum_decrypts_to_uniform_noise(attack: Attack) -> None:
    plan = attack.plan(2, NODES)
    uploads = attack.uploads_of(plan, NODES)
    four = attack.summed([uploads[node] for node in NODES[:4]])
    fields = attack.decrypt(attack.manifest(plan, _attestations(uploads), NODES), four)
    assert _uniform(fields, plan.layout.bits)


def test_refused_requests_and_then_the_honest_sum_which_decodes_within_bounds(attack: Attack) -> None:
    plan = attack.plan(3, NODES)
    uploads = attack.uploads_of(plan, NODES)
    attested = _attestations(uploads)
    honest = attack.summed(list(uploads.values()))
    manifest = attack.manifest(plan, attested, NODES)
    padded = [list(chunk) for chunk in honest]
    padded[0][0] = padded[0][0] + b"\xfa\x07\x01\x00"  # an unknown protobuf field appended
    odd_scale = [list(chunk) for chunk in honest]
    odd_scale[0][0] = bytes(ts.ckks_vector(attack.context, np.zeros(attack.key.slots), scale=2.0**30).serialize())
    short = [list(chunk) for chunk in honest]
    short[0][0] = bytes(ts.ckks_vector(attack.context, [0.0] * 10).serialize())
    extra = [list(chunk) for chunk in honest]
    extra[0].append(extra[0][0])  # one more ciphertext than the attested size needs
    identities = attack.consortium.identities
    outsiders = []
    for node in EXTRA:  # registered members' attestations for a set of nine: above n_max = 8
        unsigned = replace(attestation_from_wire(attested[0]), node_id=node,
                           participant_set=participant_set_hash(NODES + EXTRA))
        outsiders.append(attestation_to_wire(replace(unsigned, signature=load_identity(
            identities / f"{node}.key").sign(unsigned.signed_message()))))
    refusals = {
        "inflated value count": attack.refusal(replace_field(manifest, value_count=plan.upload_value_count + 1),
                                               honest),
        "extra ciphertexts per chunk": attack.refusal(manifest, extra),
        "padded ciphertext": attack.refusal(manifest, padded),
        "odd-scale ciphertext": attack.refusal(manifest, odd_scale),
        "wrong-size ciphertext": attack.refusal(manifest, short),
        "attestations made for another set": attack.refusal(
            attack.manifest(plan, attested[:4], NODES[:4]), attack.summed([uploads[n] for n in NODES[:4]])),
        "attestations made for another attempt": attack.refusal(replace_field(manifest, attempt=2), honest),
        "more than n_max participants": attack.refusal(attack.manifest(plan, attested + outsiders, NODES + EXTRA),
                                                       honest),
    }
    assert {name: code for name, (code, _) in refusals.items()} == {
        "inflated value count": grpc.StatusCode.PERMISSION_DENIED,
        "extra ciphertexts per chunk": grpc.StatusCode.INVALID_ARGUMENT,
        "padded ciphertext": grpc.StatusCode.INVALID_ARGUMENT,
        "odd-scale ciphertext": grpc.StatusCode.INVALID_ARGUMENT,
        "wrong-size ciphertext": grpc.StatusCode.INVALID_ARGUMENT,
        "attestations made for another set": grpc.StatusCode.PERMISSION_DENIED,
        "attestations made for another attempt": grpc.StatusCode.PERMISSION_DENIED,
        "more than n_max participants": grpc.StatusCode.PERMISSION_DENIED,
    }, refusals
    assert "scale" in refusals["odd-scale ciphertext"][1] and "bytes" in refusals["padded ciphertext"][1]
    # None of those spent the round: the honest sum still decrypts, once, and decodes within the bound.
    fields = attack.decrypt(manifest, honest)
    q = plan.quantization
    signed = to_centered(fields - len(NODES) * field_offset(q.bits), q.bits)
    assert 0 < np.linalg.norm(signed) <= sum_norm_bound(q, len(NODES))
    assert not _uniform(fields, plan.layout.bits)  # the control: a real sum is not uniform
    assert attack.refusal(manifest, honest)[0] == grpc.StatusCode.ALREADY_EXISTS  # the same round twice
    # A second attempt of the decrypted round, with valid attestations of its own, is refused too.
    second = attack.plan(3, NODES[:4], attempt=2)
    again = attack.uploads_of(second, NODES[:4])
    code, details = attack.refusal(attack.manifest(second, _attestations(again), NODES[:4]),
                                   attack.summed(list(again.values())))
    assert code == grpc.StatusCode.ALREADY_EXISTS and "whatever its attempt" in details


def replace_field(manifest: pb.DecryptManifest, **changes: object) -> pb.DecryptManifest:
    changed = pb.DecryptManifest()
    changed.CopyFrom(manifest)
    for name, value in changes.items():
        setattr(changed, name, value)
    return changed


def test_another_rounds_sum_under_this_rounds_manifest_decrypts_to_uniform_noise(attack: Attack) -> None:
    """The aggregator alone: it declares hospital-5 lost in round 4 and decrypts attempt 2 honestly, then presents
    round 4's unused attempt-1 sum, whose pairwise masks cancel, under round 5's manifest. Were that decrypted, the
    difference of the two sums would be hospital-5's update. The key authority removes only round 5's authority
    masks, so round 4's stay, and what comes back is uniform."""
    first = attack.plan(4, NODES)
    attempt_1 = attack.uploads_of(first, NODES)
    second = attack.plan(4, NODES[:4], attempt=2)
    attempt_2 = attack.uploads_of(second, NODES[:4])
    honest = attack.decrypt(attack.manifest(second, _attestations(attempt_2), NODES[:4]),
                            attack.summed(list(attempt_2.values())))
    assert not _uniform(honest, second.layout.bits)  # the control: a real sum
    replay_plan = attack.plan(5, NODES)
    round_5 = attack.uploads_of(replay_plan, NODES)
    replayed = attack.decrypt(attack.manifest(replay_plan, _attestations(round_5), NODES),
                              attack.summed(list(attempt_1.values())))
    assert _uniform(replayed, replay_plan.layout.bits)


def test_nodes_sent_different_plans_cannot_be_summed(attack: Attack) -> None:
    """The aggregator sends hospital-5 the real plan and the others a plan that makes them contribute nearly
    nothing (learning rate near 0), hoping to read hospital-5's update from the one decryption. Their attestations
    name different plans: the key authority refuses, and even the masks, bound to each plan, would not cancel."""
    real = attack.plan(6, NODES)
    lazy = replace(real, training=replace(real.training, learning_rate=1e-12))
    uploads = {**attack.uploads_of(lazy, NODES[:4], to=NODES[:4]), **attack.uploads_of(real, NODES[4:], to=NODES[4:])}
    chunks = attack.summed(list(uploads.values()))
    for named in (real, lazy):
        code, details = attack.refusal(attack.manifest(named, _attestations(uploads), NODES), chunks)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "plan" in details


@pytest.mark.parametrize(("round_id", "downgrade", "reason"), [
    (10, {"secure": False}, "plaintext_refused"),
    (11, {"noise_kind": NoiseKind.NONE}, "noise_below_floor"),
    (12, {"noise_variance": 0.5}, "noise_below_floor"),
    (13, {"clip_norm": 1e4}, "clip_above_ceiling"),
    (14, {"participants": ("hospital-1", "hospital-2")}, "participant_set_below_floor"),
    (15, {"min_participants": 1_000_000}, "noise_below_floor"),
    (16, {"noise_kind": NoiseKind.POISSON}, "noise_below_floor"),
    (17, {"scale": 1e6}, "codec_mismatch"),
    (18, {"participants": tuple(NODES[:4]) + ("hospital-4",)}, "duplicate_participant"),
])
def test_every_node_declines_a_downgraded_plan_by_name_and_uploads_nothing(attack: Attack, round_id: int,
                                                                          downgrade: dict[str, object],
                                                                          reason: str) -> None:
    plan = attack.plan(round_id, NODES)
    codec = {k: v for k, v in downgrade.items()
             if k in ("noise_kind", "noise_variance", "clip_norm", "min_participants", "scale")}
    plan = replace(plan, quantization=replace(plan.quantization, **codec),
                   **{k: v for k, v in downgrade.items() if k not in codec})
    asked = plan.participants
    attack.harness.send(plan, attack.model_for(plan.round_id))
    attack.harness.wait(lambda: all((node, round_id, 1) in attack.harness.declines for node in asked))
    assert {attack.harness.declines[(node, round_id, 1)] for node in asked} == {reason}
    assert not [key for key in attack.harness.uploads if key[1] == round_id]


def test_a_second_plan_under_an_attempt_already_used_is_declined(attack: Attack) -> None:
    """Two encodings under one mask would let their difference cancel it: round 1 attempt 1 was uploaded above, so
    the same attempt asked again, at another scale, is declined by every node."""
    plan = attack.plan(1, NODES)
    plan = replace(plan, quantization=replace(plan.quantization, clip_norm=4.0))
    attack.harness.send(plan, attack.model_for(plan.round_id))
    attack.harness.wait(lambda: all((node, 1, 1) in attack.harness.declines for node in NODES))
    assert {attack.harness.declines[(node, 1, 1)] for node in NODES} == {"attempt_reused"}



def test_no_class_counts_are_sent_to_a_set_short_of_the_whole_consortium(attack: Attack) -> None:
    """Pooled class counts (`pooled_counts`) go only to the whole consortium: the aggregator could otherwise pool a
    hospital that keeps its counts with hospitals that disclosed theirs, and subtract. Here four registered members
    have no process, so no set the harness can plan is the whole consortium: every upload so far, and the uploads of
    all five and of four nodes now, carry none."""
    attack.uploads_of(attack.plan(60, NODES), NODES)
    attack.uploads_of(attack.plan(61, NODES[:4]), NODES[:4], to=NODES[:4])
    assert len(attack.harness.uploads) >= 9 and all(not chunks[-1].masked_class_counts
                                                    for chunks in attack.harness.uploads.values())



def test_a_restarted_node_still_declines_an_attempt_it_uploaded_in_before(attack: Attack) -> None:
    """An attempt replayed to a node after a restart would have it upload a second time under the same masks (their
    difference is the difference of two updates, unmasked): the attempts it joined are on disk, so it declines."""
    node = NODES[0]
    plan = attack.plan(70, NODES)
    attack.uploads_of(plan, NODES)
    key = (node, 70, 1)
    with attack.harness.changed:
        del attack.harness.outboxes[node], attack.harness.uploads[key]
    attack.consortium.kill(node)
    attack.consortium.restart(node)
    attack.harness.wait(lambda: node in attack.harness.outboxes)
    attack.harness.send(plan, attack.model_for(plan.round_id), to=[node])
    attack.harness.wait(lambda: key in attack.harness.declines or key in attack.harness.uploads)
    assert key not in attack.harness.uploads and attack.harness.declines[key] == "attempt_reused"


def _evaluation(attack: Attack, round_id: int, participants: tuple[str, ...], shift: float) -> RoundPlan:
    """An EVALUATE plan for a model of its own (the initial weights plus `shift`: a model no node has seen)."""
    model = broadcast_chunks(flatten_state(build_model("tiny", 2, 0).state_dict()) + shift)
    plan = attack.planner.plan(round_id, RoundKind.EVALUATE, model, attempt=1, participants=frozenset(participants))
    attack.harness.send(plan, model)
    return plan


def _validation_images(attack: Attack) -> dict[str, int]:
    """Each node's validation images, from the line its log starts with."""
    found = {}
    for node in NODES:
        match = re.search(r"(\d+) train / (\d+) validation images", (attack.consortium.logs / f"{node}.log").read_text())
        assert match, f"{node} logged no data line"
        found[node] = int(match.group(2))
    return found


def _pooled(attack: Attack, model_round: int) -> EvaluationReport:
    """What the aggregator can read of the nodes' masked reports on a model: their sum over the whole set."""
    reports = {node: attack.harness.reports[(node, model_round)] for node in NODES}
    report, _ = pooled_report({node: r.masked_counts for node, r in reports.items()}, NODES, 2, bins=100,
                              model_round=model_round)
    validate_report(report, 2)  # consistent counts, finite and in range
    return report


def test_evaluation_is_answered_masked_and_only_for_the_one_set_the_node_answers(attack: Attack) -> None:
    """Evaluation was an oracle: crafted models sent with an empty set were scored by everyone, and each report
    gave the hospital's counts. Now an empty set, a set of two (below every node's minimum of 3) and a set of four
    (not the five that the nodes answered first) get no report; the honest plan sent last, which every node handles
    after the others, is answered by all, masked: alone, a report is uniform over the field and holds no plain
    count; the aggregator reads only the five's sum, and over four of them it reads nothing. hospital-2 validates on
    one image, below its floor of 5: it counts none of it in the sum."""
    _evaluation(attack, 80, tuple(NODES), 0.005)  # the set every node answers (already, after the first round)
    attack.harness.wait(lambda: all((node, 79) in attack.harness.reports for node in NODES))
    _evaluation(attack, 81, (), 0.01)
    _evaluation(attack, 82, tuple(NODES[:2]), 0.02)
    _evaluation(attack, 83, tuple(NODES[1:]), 0.03)
    _evaluation(attack, 84, tuple(NODES), 0.04)
    attack.harness.wait(lambda: all((node, 83) in attack.harness.reports for node in NODES))
    reports = attack.harness.reports
    assert not [key for key in reports if key[1] in (80, 81, 82)]
    for node in NODES:
        report = reports[(node, 83)]
        assert sorted(report.masked_for) == NODES and report.examples == 0 and report.loss_sum == 0
        assert not (report.confusion or report.positive_histograms or report.calibration_positive_histograms)
        high = np.asarray(report.masked_counts, dtype=np.uint64) >= (1 << 47)
        assert abs(high.mean() - 0.5) < 4.5 * 0.5 / np.sqrt(high.size)
    with pytest.raises(PooledCountsError):
        pooled_report({node: reports[(node, 83)].masked_counts for node in NODES[1:]}, NODES[1:], 2, bins=100,
                      model_round=83)
    images = _validation_images(attack)
    assert images[NODES[1]] == 1 and images[NODES[4]] == 13
    assert _pooled(attack, 83).counts.examples == sum(n for n in images.values() if n >= 5)


def test_a_learning_rate_of_1e30_is_declined_by_name_and_the_next_evaluation_is_finite(attack: Attack) -> None:
    """Four nodes decline it by their bound. hospital-5 allows it (max_learning_rate 1e31, as a careless hospital
    might): it trains, its BatchNorm statistics go non-finite, and it restores its local state and declines by name;
    its next evaluation, on 13 validation images, is finite (a node masks no count that is not finite, so the five's
    sum decodes only if it is)."""
    plan = attack.plan(85, NODES)
    plan = replace(plan, training=replace(plan.training, learning_rate=1e30))
    attack.harness.send(plan, attack.model_for(plan.round_id))
    attack.harness.wait(lambda: all((node, 85, 1) in attack.harness.declines for node in NODES))
    assert {node: attack.harness.declines[(node, 85, 1)] for node in NODES} == {
        **{node: "learning_rate_out_of_bounds" for node in NODES[:4]}, NODES[4]: "training_not_finite"}
    assert not [key for key in attack.harness.uploads if key[1] == 85]
    _evaluation(attack, 87, tuple(NODES), 0.05)
    attack.harness.wait(lambda: all((node, 86) in attack.harness.reports for node in NODES))
    pooled = _pooled(attack, 86)
    images = _validation_images(attack)
    assert pooled.counts.examples == sum(n for n in images.values() if n >= 5)
    assert np.isfinite(pooled.counts.loss_sum) and pooled.counts.loss_sum > 0  # hospital-5 counted its 13 above


def test_differencing_two_sets_on_one_model_is_refused_in_every_pair(attack: Attack) -> None:
    """The cross-round attack: round r with every node, round r+1 on the same model and plan without the victim
    (hospital-5), eight times over; the difference of each pair's sums would be the victim's update plus jitter
    and noise (averaged over eight pairs, a cosine of 0.84 to 0.86 with its true update, measured before this
    rule). The key authority decrypts the first sum of each pair and refuses the second: one participant set per
    model. The nodes attest the model they trained on, so a relabelled one would not verify."""
    refused = []
    for pair in range(8):
        round_id = 100 + 2 * pair
        model = attack.model_for(round_id)
        both = [attack.planner.plan(round_id + step, RoundKind.TRAIN, model, attempt=1, participants=frozenset(members))
                for step, members in enumerate((NODES, NODES[:4]))]
        everyone = attack.uploads_of(both[0], NODES)
        attack.harness.send(both[1], model, NODES[:4])
        keys = [(node, both[1].round_id, 1) for node in NODES[:4]]
        attack.harness.wait(lambda: all(k in attack.harness.uploads for k in keys))
        without = {node: attack.harness.uploads[(node, both[1].round_id, 1)] for node in NODES[:4]}
        first = attack.decrypt(attack.manifest(both[0], _attestations(everyone), NODES),
                               attack.summed(list(everyone.values())))
        assert not _uniform(first, both[0].layout.bits)  # the control: the first sum of the pair is a real one
        refused.append(attack.refusal(attack.manifest(both[1], _attestations(without), NODES[:4]),
                                      attack.summed(list(without.values()))))
    assert all(code == grpc.StatusCode.PERMISSION_DENIED and "one participant set per model" in details
               for code, details in refused), refused
