"""The round loop in one process: real parts, real TenSEAL, an in-process key authority and three in-process nodes.

No service process and no gRPC: the nodes subscribe through `Membership`, upload through `UploadIntake` with the
node's own `secure_upload`, and the key authority is its own policy and decryption behind the client's interface.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from services.aggregator.config import AggregatorSettings
from services.aggregator.evaluation_board import EvaluationBoard
from services.aggregator.membership import Membership
from services.aggregator.privacy_accountant import SkellamAccountant
from services.aggregator.privacy_budget import PrivacyBudgetGuard
from services.aggregator.round_loop import RoundLoop, RoundParts
from services.aggregator.run_outcome import RunOutcome
from services.aggregator.run_state import RunState
from services.aggregator.strategies.factory import build_strategy
from services.aggregator.strategies.head_refit import HeadRefit
from services.aggregator.upload_intake import UploadIntake
from services.common.errors import DecryptionRefusedError
from services.common.ml.evaluation_report import EvaluationCounts, EvaluationReport
from services.common.ml.head_refit import head_positions
from services.common.ml.model_spec import flatten_state, parameter_spec
from services.common.ml.models import build_model
from services.common.protocol.class_roster import ClassRoster
from services.common.protocol.node_identity import NodeKeyRegistry, generate_identity, load_agreement_key, load_identity
from services.common.protocol.public_key import PublicKeyInfo
from services.common.protocol.round_plan import ModelChunk, RoundKind, RoundPlan, TrainingFinished
from services.common.protocol.upload import DecryptManifest, PhaseSeconds
from services.common.runtime.atomic_files import read_json_lines
from services.common.runtime.metrics import ServiceMetrics
from services.common.secure_sum.noise import NoiseKind
from services.common.secure_sum.pairwise_masks import MaskScope, authority_unmasks, peer_masks
from services.common.secure_sum.pooled_counts import COUNTS_DOMAIN, POOLED_COUNTS_FILE, masked_counts
from services.common.secure_sum.update_codec import plan_quantization
from services.hospital_node.encryption_pool import EncryptionPool
from services.hospital_node.update_stream import (
    Disclosures,
    UploadTimings,
    attempt_scope,
    masked_recipe,
    secure_upload,
)
from services.key_authority.decryption_policy import DecryptionLedger, DecryptionPolicy
from services.key_authority.key_store import KeyMaterial, load_or_create_keys
from services.key_authority.sum_decryption import decrypt_stream
from tests.evaluations import histograms_for

NODES = ("hospital-1", "hospital-2", "hospital-3")
CLASSES = ClassRoster(("NORMAL", "PNEUMONIA"), (10, 10))
IMAGES = {"hospital-1": (10, 10), "hospital-2": (3, 40), "hospital-3": (250, 0)}  # what each masks and sends


class InProcessKeyAuthority:
    """The key authority's policy and decryption behind the aggregator client's two calls; it refuses the rounds
    in `refuse` as a key authority that found something wrong would."""

    def __init__(self, keys: KeyMaterial, policy: DecryptionPolicy, node_keys: dict[str, X25519PublicKey],
                 refuse: frozenset[int] = frozenset()) -> None:
        self.keys, self.policy, self.policy_keys, self.refuse = keys, policy, node_keys, refuse
        self.decrypted: list[int] = []

    def public_key(self) -> PublicKeyInfo:
        return self.keys.public_info(3)

    def decrypt(self, manifest: DecryptManifest, chunks: Callable[[], Iterator[list[bytes]]],
                retry_seconds: float = 0.0, stop: threading.Event | None = None) -> np.ndarray:
        if manifest.round_id in self.refuse:
            raise DecryptionRefusedError(f"the key authority refused round {manifest.round_id}: PERMISSION_DENIED")
        self.policy.check(manifest)
        scope = MaskScope("fedxray", manifest.key_id, manifest.round_id, manifest.attempt, manifest.participants,
                          manifest.plan_digest)
        unmasks = authority_unmasks(self.keys.agreement, self.policy_keys, scope)
        fields = decrypt_stream(self.keys, manifest, enumerate(chunks()), unmasks=unmasks,
                                claim=lambda: self.policy.claim(manifest))
        self.decrypted.append(manifest.round_id)
        return np.concatenate(fields).astype(np.int64)


def _counts() -> EvaluationCounts:
    confusion = np.array([[3, 1], [1, 3]])
    return EvaluationCounts(confusion, 2.0, 8, *histograms_for(confusion))


def _node(node_id: str, folder: Path, membership: Membership, intake: UploadIntake, board: EvaluationBoard,
          registry: NodeKeyRegistry, pool: EncryptionPool, updates: dict[str, np.ndarray],
          stop: threading.Event, public: PublicKeyInfo, wrong_masks: bool = False) -> None:
    """A hospital that evaluates every model and uploads a fixed update in every training round."""
    identity = load_identity(folder / f"{node_id}.key")
    agreement = load_agreement_key(folder / f"{node_id}.key")
    plan: RoundPlan | None = None
    chunks = 0
    for message in membership.subscribe(node_id, membership.spec, CLASSES, lambda: not stop.is_set()):
        if isinstance(message, TrainingFinished):
            return
        if isinstance(message, RoundPlan):
            plan, chunks = message, 0
            continue
        assert isinstance(message, ModelChunk) and plan is not None
        chunks += 1
        if chunks < plan.model.chunk_count:
            continue
        board.report(EvaluationReport(node_id, plan.round_id - 1, _counts()))
        if plan.kind is not RoundKind.TRAIN:
            continue
        scope = attempt_scope("fedxray", plan)
        if wrong_masks:  # masks made for another attempt
            scope = replace(scope, attempt=plan.attempt + 9)
        recipe = masked_recipe(plan, node_id, agreement, peers=registry.agreement_keys, public=public, scope=scope)
        counted = masked_counts(IMAGES[node_id], peer_masks(node_id, agreement, registry.agreement_keys, scope=scope,
                                                            domain=COUNTS_DOMAIN))
        upload = list(secure_upload(plan, updates[node_id], node_id, key=identity, pool=pool, recipe=recipe,
                                    timings=UploadTimings(), disclosures=Disclosures(None, tuple(counted))))
        state, staged = intake.begin(upload[0])
        for chunk in upload:
            staged.add(chunk)
        assert upload[-1].attestation is not None
        intake.complete(state, staged.finish(upload[-1].attestation, registry, upload[-1].phases or PhaseSeconds(),
                                             record_privacy=None, masked_class_counts=counted))


@dataclass
class Run:
    loop: RoundLoop
    run: RunState
    authority: InProcessKeyAuthority
    rows: list[dict[str, object]]
    initial: np.ndarray
    mean: np.ndarray  # of the honest updates
    step: float  # one step of the codec's scale


def _run_loop(tmp_path: Path, refuse: frozenset[int] = frozenset(), wrong_masks: str | None = None) -> Run:
    """Three in-process nodes and two secure rounds through a real RoundLoop; the key authority refuses the rounds
    in `refuse`, and node `wrong_masks` masks for another attempt than the one it was asked for."""
    for node in NODES:
        generate_identity(tmp_path / "identities", node)
    registry = NodeKeyRegistry.from_directory(tmp_path / "identities")
    keys = load_or_create_keys(8, None, tmp_path / "ka", persist=False)
    authority = InProcessKeyAuthority(keys, DecryptionPolicy(keys, 3, registry,
                                                             DecryptionLedger(tmp_path / "ka" / "ledger.json")),
                                      registry.agreement_keys, refuse)
    settings = AggregatorSettings(insecure=True, rounds=2, expected_participants=3, min_participants=3,
                                  architecture="tiny", state_dir=tmp_path / "aggregator", clip_norm=5.0,
                                  noise_kind="none", noise_variance=0.0, server_momentum=0.5,
                                  join_timeout_seconds=30, round_deadline_seconds=120, head_refit=False)
    model = build_model("tiny", 2, 0)
    spec = parameter_spec(model.state_dict())
    metrics = ServiceMetrics("aggregator")
    membership = Membership(registry.node_ids, spec)
    intake = UploadIntake(settings.state_dir / "staging", registry.node_ids, metrics)
    board = EvaluationBoard(2, settings.state_dir / "rounds.jsonl", metrics)
    accountant = SkellamAccountant(settings.delta)
    initial = flatten_state(model.state_dict())
    run = RunState(initial.copy(), build_strategy(settings, spec.count), accountant)
    loop = RoundLoop(settings, metrics, authority,  # type: ignore[arg-type]
                     parts=RoundParts(membership, intake, board, PrivacyBudgetGuard(accountant, settings.epsilon_budget,
                                                                                    3,
                                                                              True),
                                run, HeadRefit(head_positions(model, spec), 0.1)))
    rng = np.random.default_rng(1)
    updates = {node: rng.normal(0, 0.02, spec.count) for node in NODES}  # norm about 3: inside the clip norm
    stop = threading.Event()
    with EncryptionPool(keys.public_context, workers=0) as pool:
        nodes = [threading.Thread(target=_node, args=(node, tmp_path / "identities", membership, intake, board,
                                                     registry, pool, updates, stop,
                                                     keys.public_info(3), node == wrong_masks))
                 for node in NODES]
        for thread in nodes:
            thread.start()
        loop.run(stop)
        stop.set()
        for thread in nodes:
            thread.join(30)
    assert not list((settings.state_dir / "staging").glob("*"))
    return Run(loop, run, authority, read_json_lines(settings.state_dir / "rounds.jsonl"), initial,
               np.mean(list(updates.values()), axis=0),
               1 / plan_quantization(spec.count, 5.0, keys.layout.bits, max_participants=8, min_participants=3,
                                     noise_kind=NoiseKind.NONE, noise_variance=0.0).scale)


def test_the_loop_runs_secure_rounds_and_records_them(tmp_path: Path) -> None:
    result = _run_loop(tmp_path)
    assert RunOutcome.read(tmp_path / "aggregator") == RunOutcome(failed=False, completed_rounds=2)
    assert result.authority.decrypted == [1, 2]
    assert [(row["round"], row["participants"]) for row in result.rows] == [(0, 0), (1, 3), (2, 3)]
    assert all(row["evaluation"]["nodes"] == 3 for row in result.rows)  # type: ignore[index]
    # FedAvgM 0.5 moved the model by the mean twice (m, then 0.5 m + m), each mean exact to within its rounding:
    # less than one step of the codec's scale per coordinate, so 2.5 steps in all.
    assert np.max(np.abs(result.run.weights - (result.initial + 2.5 * result.mean))) < 2.5 * result.step
    assert np.max(np.abs(result.run.weights - result.initial)) > 10 * result.step  # and it did move
    # The first round's masked class counts pooled to the three hospitals' totals, written once.
    pooled = json.loads((tmp_path / "aggregator" / POOLED_COUNTS_FILE).read_text())
    assert (pooled["round"], pooled["hospitals"], pooled["counts"]) == (1, list(NODES), [263, 50])


def test_a_round_the_key_authority_refuses_fails_alone_and_the_run_goes_on(tmp_path: Path) -> None:
    result = _run_loop(tmp_path, refuse=frozenset({1}))
    assert RunOutcome.read(tmp_path / "aggregator") == RunOutcome(failed=False, completed_rounds=1)
    first, second = result.rows[1], result.rows[2]
    assert first["failed"] is True and "refused round 1" in str(first["error"]) and not second.get("failed")
    # Round 1 left the model; round 2 moved it by one mean (FedAvgM's first step).
    assert np.max(np.abs(result.run.weights - (result.initial + result.mean))) < result.step


def test_a_node_with_wrong_masks_makes_its_round_fail_as_out_of_bounds_not_the_model(tmp_path: Path) -> None:
    result = _run_loop(tmp_path, wrong_masks="hospital-2")
    rows = result.rows[1:]
    assert all(row["failed"] is True and "norm" in str(row["error"]) for row in rows), rows
    assert np.array_equal(result.run.weights, result.initial)  # no out-of-bounds sum reached the model
    assert result.authority.decrypted == [1, 2] and result.run.accountant.rounds == 2  # released, so accounted
