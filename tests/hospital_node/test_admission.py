"""The node's admission gate, driven through a real `HospitalNode` with a fake consortium client (no network): what
it answers, declines or sends for each plan a deviating aggregator might send."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from services.aggregator.config import AggregatorSettings
from services.aggregator.round_planner import RoundPlanner, broadcast_chunks
from services.common.ml.evaluation_report import EvaluationReport, MaskedEvaluationReport
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.ml.trainable import classifier_head
from services.common.protocol.node_identity import NodeKeyRegistry, generate_identity
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import RoundDecline, RoundKind, RoundPlan
from services.common.protocol.upload import SubmitReceipt, UploadChunk, disclosures_digest
from services.common.runtime.metrics import ServiceMetrics
from services.common.secure_sum.masked_evaluation import vector_length
from services.hospital_node.config import HospitalNodeSettings
from services.hospital_node.data.local_data import LocalData
from services.hospital_node.node_loop import HospitalNode
from services.key_authority.key_store import KeyMaterial, load_or_create_keys

pytestmark = pytest.mark.unit
NODES = ("hospital-1", "hospital-2", "hospital-3")
OTHER = "hospital-4"  # a registered member outside the default set


class FakeClient:
    """The consortium as the node sees it, in memory: what the node declines, reports and submits."""

    def __init__(self, public: PublicKeyInfo) -> None:
        self.public = public
        self.declines: list[RoundDecline] = []
        self.reports: list[EvaluationReport | MaskedEvaluationReport] = []
        self.uploads: list[list[UploadChunk]] = []

    def public_key(self, timeout: float = 60) -> PublicKeyInfo:
        return self.public

    def decline(self, decline: RoundDecline, timeout: float = 60) -> None:
        self.declines.append(decline)

    def report(self, report: EvaluationReport | MaskedEvaluationReport, timeout: float = 60) -> None:
        self.reports.append(report)

    def submit(self, chunks: object, timeout: float) -> SubmitReceipt:
        sent = list(chunks)  # type: ignore[call-overload]
        self.uploads.append(sent)
        return SubmitReceipt(sent[0].round_id, len(sent), b"")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> KeyMaterial:
    return load_or_create_keys(8, None, tmp_path_factory.mktemp("ka"), persist=False)


class Setting:
    def __init__(self, tmp_path: Path, keys: KeyMaterial) -> None:
        folder = tmp_path / "keys"
        for node in (*NODES, OTHER):
            generate_identity(folder, node)
        self.registry = NodeKeyRegistry.from_directory(folder)
        self.settings = HospitalNodeSettings(insecure=True, node_id=NODES[0], architecture="tiny", image_size=16,
                                             identity_key=folder / f"{NODES[0]}.key", state_dir=tmp_path / "state",
                                             allow_plaintext=True, encryption_workers=0, min_validation_images=4,
                                             seed=1)
        generator = torch.Generator().manual_seed(0)
        images, labels = torch.rand(24, 1, 16, 16, generator=generator), torch.tensor([0, 1] * 12)
        self.data = LocalData(images[:16], labels[:16], images[16:], labels[16:], 2)
        self.client = FakeClient(keys.public_info(3))
        self.restart()
        model = build_model("tiny", 2, 0)
        self.weights = flatten_state(model.state_dict())
        spec = parameter_spec(model.state_dict())
        planner_settings = AggregatorSettings(insecure=True, secure=False, architecture="tiny", clip_norm=5.0,
                                              local_epochs=1, local_optimizer="sgd", learning_rate=0.01)
        self.planner = RoundPlanner(planner_settings, keys.public_info(3), spec, upload_dimension=spec.count,
                                    statistics_dimension=1)

    def restart(self) -> None:
        """A new node process on the same state directory."""
        self.node = HospitalNode(self.settings, self.data, ServiceMetrics("hospital_node"),
                                 client=self.client)  # type: ignore[arg-type]

    def send(self, round_id: int, kind: RoundKind = RoundKind.TRAIN, participants: tuple[str, ...] = NODES,
             shift: float = 0.0, **changes: object) -> RoundPlan:
        model = broadcast_chunks(self.weights + shift)
        plan = replace(self.planner.plan(round_id, kind, model, attempt=1, participants=frozenset(participants)),
                       **changes)
        self.node._take_part(plan, model)
        return plan


@pytest.fixture
def setting(tmp_path: Path, keys: KeyMaterial) -> Setting:
    return Setting(tmp_path, keys)


def test_evaluation_is_answered_once_per_model_and_only_among_enough_members_that_include_the_node(
        setting: Setting) -> None:
    setting.send(2, RoundKind.EVALUATE, participants=())
    setting.send(3, RoundKind.EVALUATE, participants=NODES[1:] + ("hospital-4",))
    setting.send(4, RoundKind.EVALUATE, participants=NODES[:2])
    assert setting.client.reports == [] and setting.client.declines == []  # nothing leaves, nothing to decline
    setting.send(5, RoundKind.EVALUATE, shift=0.01)
    assert [r.model_round for r in setting.client.reports] == [4]
    setting.send(6, RoundKind.EVALUATE, shift=0.01)  # the same model under another round id: the same counts
    first, again = setting.client.reports
    assert (first.model_round, again.model_round) == (4, 5)
    assert again.counts is first.counts  # nothing new leaves the hospital


def test_a_secure_evaluation_goes_masked_for_one_set_per_key_even_across_a_restart(setting: Setting) -> None:
    """In a secure plan the counts leave only masked for the plan's set. A node answers one set under a key, and one
    masked vector per model: a server that asks another set gets nothing (two pooled sums over different sets would
    differ by one hospital's counts, on any model, since a confusion matrix's row sums are its class counts), before
    and after the node restarts; the same model under the same set gets the same values."""
    other_set = ("hospital-1", "hospital-2", OTHER)
    setting.send(5, RoundKind.EVALUATE, shift=0.02, secure=True)
    [first] = setting.client.reports
    assert isinstance(first, MaskedEvaluationReport)
    assert (first.participants, first.model_round, len(first.values)) == (NODES, 4, vector_length(2, 100))
    setting.send(6, RoundKind.EVALUATE, shift=0.02, secure=True)
    setting.send(7, RoundKind.EVALUATE, participants=other_set, shift=0.02, secure=True)
    assert setting.client.reports == [first, replace(first, model_round=5)]
    setting.restart()
    setting.send(8, RoundKind.EVALUATE, participants=other_set, shift=0.02, secure=True)
    setting.send(9, RoundKind.EVALUATE, shift=0.02, secure=True)
    assert setting.client.reports[2:] == [replace(first, model_round=8)]
    setting.send(10, RoundKind.EVALUATE, participants=other_set, shift=0.03, secure=True)  # a new model, no matter
    assert len(setting.client.reports) == 3
    setting.send(11, RoundKind.EVALUATE, shift=0.03, secure=True)
    last = setting.client.reports[-1]
    assert isinstance(last, MaskedEvaluationReport) and last.model_round == 10 and last.values != first.values
    # Declined by name, so that an aggregator's closing evaluation does not wait for a report that never comes.
    assert [(d.round_id, d.reason) for d in setting.client.declines] == [(7, "evaluation_withheld"),
                                                                        (8, "evaluation_withheld"),
                                                                        (10, "evaluation_withheld")]


def test_a_hospital_that_opts_in_also_sends_its_own_counts_in_the_clear(setting: Setting) -> None:
    setting.settings = setting.settings.model_copy(update={"share_evaluation": True})
    setting.restart()
    setting.send(5, RoundKind.EVALUATE, shift=0.02, secure=True)
    masked, plain = setting.client.reports
    assert isinstance(masked, MaskedEvaluationReport) and isinstance(plain, EvaluationReport)
    assert plain.counts.examples == 8


def test_training_parameters_outside_the_bounds_are_declined_and_nothing_is_sent(setting: Setting) -> None:
    plan = setting.planner.plan(2, RoundKind.TRAIN, broadcast_chunks(setting.weights), attempt=1,
                                participants=frozenset(NODES))
    setting.node._take_part(replace(plan, training=replace(plan.training, learning_rate=1e30)),
                            broadcast_chunks(setting.weights))
    assert [d.reason for d in setting.client.declines] == ["learning_rate_out_of_bounds"]
    assert setting.client.uploads == [] and setting.client.reports == []


def test_a_model_that_is_not_the_one_its_digest_names_is_declined(setting: Setting) -> None:
    plan = setting.planner.plan(2, RoundKind.TRAIN, broadcast_chunks(setting.weights), attempt=1,
                                participants=frozenset(NODES))
    setting.node._take_part(plan, broadcast_chunks(setting.weights + 1.0))
    assert [d.reason for d in setting.client.declines] == ["malformed_plan"]
    assert setting.client.uploads == [] and setting.client.reports == []


def test_an_admitted_round_reports_then_uploads_once_with_a_signature_over_everything_it_sends(
        setting: Setting) -> None:
    setting.send(2)
    assert setting.client.declines == []
    assert [r.model_round for r in setting.client.reports] == [1]
    (upload,) = setting.client.uploads
    last = upload[-1]
    assert last.attestation is not None
    setting.registry.verify(NODES[0], last.attestation.signed_message(), last.attestation.signature)
    assert last.attestation.disclosures == disclosures_digest(last.record_privacy, last.masked_class_counts)
    assert np.isfinite(np.frombuffer(b"".join(c.plaintext_values for c in upload), dtype="<f4")).all()
    # The same attempt again: declined by the node's own ledger, nothing sent twice.
    setting.send(2)
    assert [d.reason for d in setting.client.declines] == ["attempt_reused"] and len(setting.client.uploads) == 1


def test_a_secure_plan_that_does_not_name_the_node_is_left_alone(setting: Setting) -> None:
    setting.send(2, secure=True, participants=NODES[1:] + ("hospital-4",))
    assert setting.client.declines == [] and setting.client.uploads == [] and setting.client.reports == []


def test_adversarial_training_runs_in_a_plain_round_and_declines_a_head_only_or_dp_round(setting: Setting) -> None:
    setting.settings = setting.settings.model_copy(update={"adversarial_epsilon": 4 / 255, "adversarial_steps": 2})
    setting.restart()
    plan = setting.planner.plan(2, RoundKind.TRAIN, broadcast_chunks(setting.weights), attempt=1,
                                participants=frozenset(NODES))
    head = classifier_head(build_model("tiny", 2, 0))
    setting.node._take_part(replace(plan, training=replace(plan.training, trainable="head"),
                                    quantization=replace(plan.quantization,
                                                         dimension=head.weight.numel() + head.bias.numel())),
                            broadcast_chunks(setting.weights))
    setting.node._take_part(replace(plan, round_id=3, training=replace(plan.training, record_epsilon=8.0)),
                            broadcast_chunks(setting.weights))
    assert [(d.round_id, d.reason) for d in setting.client.declines] == [(2, "adversarial_training_unsupported"),
                                                                        (3, "adversarial_training_unsupported")]
    assert setting.client.uploads == []
    setting.send(4)
    assert len(setting.client.uploads) == 1 and len(setting.client.declines) == 2
