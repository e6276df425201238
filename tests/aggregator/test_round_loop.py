"""The round loop in one process: real parts, real TenSEAL, an in-process key authority and three in-process nodes.

No service process and no gRPC: the nodes subscribe through `Membership`, upload through `UploadIntake` with the
node's own `secure_upload`, and the key authority is its own policy and decryption behind the client's interface.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

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
from services.common.atomic_files import read_json_lines
from services.common.evaluation_report import EvaluationCounts, EvaluationReport
from services.common.head_refit import head_positions
from services.common.metrics import ServiceMetrics
from services.common.noise import NoiseKind
from services.common.update_codec import plan_quantization
from services.common.model_spec import flatten_state, parameter_spec
from services.common.models import build_model
from services.common.public_key import PublicKeyInfo
from services.common.round_plan import ModelChunk, RoundKind, RoundPlan, TrainingFinished
from services.common.stream_digest import NodeKeyRegistry, generate_identity, load_identity
from services.common.upload import DecryptManifest, PhaseSeconds
from services.hospital_node.encryption_pool import EncryptionPool
from services.hospital_node.update_stream import UploadTimings, secure_upload
from services.key_authority.decryption_policy import DecryptionLedger, DecryptionPolicy
from services.key_authority.key_store import KeyMaterial, load_or_create_keys
from services.key_authority.sum_decryption import decrypt_sum

NODES = ("hospital-1", "hospital-2", "hospital-3")


class InProcessKeyAuthority:
    """The key authority's policy and decryption behind the aggregator client's two calls."""

    def __init__(self, keys: KeyMaterial, policy: DecryptionPolicy) -> None:
        self.keys, self.policy, self.decrypted = keys, policy, []  # type: ignore[var-annotated]

    def public_key(self) -> PublicKeyInfo:
        return self.keys.public_info(3)

    def decrypt(self, manifest: DecryptManifest, chunks: Iterator[list[bytes]]) -> np.ndarray:
        self.policy.authorize(manifest)
        self.decrypted.append(manifest.round_id)
        return np.concatenate(list(decrypt_sum(self.keys, manifest, enumerate(chunks)))).astype(np.int64)


def _counts() -> EvaluationCounts:
    zeros = np.zeros((2, 100), dtype=np.int64)
    return EvaluationCounts(np.array([[3, 1], [1, 3]]), 2.0, 8, zeros, zeros)


def _node(node_id: str, folder: Path, membership: Membership, intake: UploadIntake, board: EvaluationBoard,
          registry: NodeKeyRegistry, pool: EncryptionPool, updates: dict[str, np.ndarray],
          stop: threading.Event) -> None:
    """A hospital that evaluates every model and uploads a fixed update in every training round."""
    identity = load_identity(folder / f"{node_id}.key")
    plan: RoundPlan | None = None
    chunks = 0
    for message in membership.subscribe(node_id, membership.spec, lambda: not stop.is_set()):
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
        upload = list(secure_upload(plan, updates[node_id], node_id, identity, pool, 4096, UploadTimings(),
                                    np.random.SeedSequence(len(node_id))))
        state, staged = intake.begin(upload[0])
        for chunk in upload:
            staged.add(chunk)
        assert upload[-1].attestation is not None
        intake.complete(state, staged.finish(upload[-1].attestation, registry, upload[-1].phases or PhaseSeconds()))


def test_the_loop_runs_secure_rounds_and_records_them(tmp_path: Path) -> None:
    for node in NODES:
        generate_identity(tmp_path / "identities", node)
    registry = NodeKeyRegistry.from_directory(tmp_path / "identities")
    keys = load_or_create_keys(8, None, tmp_path / "ka", persist=False)
    authority = InProcessKeyAuthority(keys, DecryptionPolicy(keys.key_id, 3, registry,
                                                             DecryptionLedger(tmp_path / "ka" / "ledger.json")))
    settings = AggregatorSettings(insecure=True, rounds=2, expected_participants=3, min_participants=3,
                                  architecture="tiny", state_dir=tmp_path / "aggregator", clip_norm=5.0,
                                  noise_kind="none", noise_variance=0.0, server_momentum=0.5,
                                  join_timeout_seconds=30, round_deadline_seconds=120)
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
                     RoundParts(membership, intake, board, PrivacyBudgetGuard(accountant, settings.epsilon_budget, 3,
                                                                              True),
                                run, HeadRefit(head_positions(model, spec), 0.1)))
    rng = np.random.default_rng(1)
    updates = {node: rng.normal(0, 0.02, spec.count) for node in NODES}  # norm about 3: inside the clip norm
    stop = threading.Event()
    with EncryptionPool(keys.public_context, workers=0) as pool:
        nodes = [threading.Thread(target=_node, args=(node, tmp_path / "identities", membership, intake, board,
                                                     registry, pool, updates, stop)) for node in NODES]
        for thread in nodes:
            thread.start()
        loop.run(stop)
        stop.set()
        for thread in nodes:
            thread.join(30)
    assert RunOutcome.read(settings.state_dir) == RunOutcome(failed=False, completed_rounds=2)
    assert authority.decrypted == [1, 2]
    rows = read_json_lines(settings.state_dir / "rounds.jsonl")
    assert [(row["round"], row["participants"]) for row in rows] == [(0, 0), (1, 3), (2, 3)]
    assert all(row["evaluation"]["nodes"] == 3 for row in rows)
    # FedAvgM 0.5 moved the model by the mean twice (m, then 0.5 m + m), each mean exact to within its rounding:
    # less than one step of the codec's scale per coordinate, so 2.5 steps in all.
    mean = np.mean(list(updates.values()), axis=0)
    step = 1 / plan_quantization(spec.count, 5.0, keys.layout.bits, 8, 3, NoiseKind.NONE, 0.0).scale
    assert np.max(np.abs(run.weights - (initial + 2.5 * mean))) < 2.5 * step
    assert np.max(np.abs(run.weights - initial)) > 10 * step  # and it did move
    assert not list((settings.state_dir / "staging").glob("*"))
