"""An upload's last chunk states, beside its payload, the record-level privacy its hospital has spent and its masked
class counts. The attestation signs both: whoever alters either on the way (a relay, a proxy, a broken client) has
the upload refused, and nothing of it is folded."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.aggregator.submission_staging import StagedSubmission, StreamHeader
from services.common.errors import DigestMismatchError
from services.common.protocol.node_identity import NodeKeyRegistry, generate_identity, load_identity
from services.common.protocol.upload import PhaseSeconds, RecordPrivacySpent, UploadChunk
from services.common.protocol.wire import plan_digest
from services.common.secure_sum.pairwise_masks import participant_set_hash
from services.hospital_node.update_stream import Disclosures, UploadTimings, plaintext_upload
from tests.plans import PLAN

pytestmark = pytest.mark.unit
NODE = "hospital-1"
SPENT = RecordPrivacySpent(7.9, 1e-5, 1.2, "patient", 9.4)


def _stage(tmp_path: Path, chunks: list[UploadChunk]) -> StagedSubmission:
    plan = replace(PLAN, secure=False)
    header = StreamHeader(plan.round_id, plan.key_id, NODE, False, plan.transfer.chunk_count,
                          plan.transfer.plaintext_chunk_values, plan.upload_value_count, plan.sum_layout,
                          plan.attempt, participant_set_hash(plan.participants), plan.transfer.chunk_ciphertexts,
                          plan_digest(plan), plan.model.sha256)
    staged = StagedSubmission(tmp_path / "staging", header, lambda index, payloads: None)
    for chunk in chunks:
        staged.add(chunk)
    return staged


def _upload(tmp_path: Path) -> tuple[list[UploadChunk], NodeKeyRegistry]:
    key = load_identity(generate_identity(tmp_path / "keys", NODE))
    plan = replace(PLAN, secure=False)
    update = np.linspace(-1.0, 1.0, plan.upload_value_count)
    chunks = list(plaintext_upload(plan, update, NODE, key=key, timings=UploadTimings(),
                                   disclosures=Disclosures(SPENT, (5, 7))))
    return chunks, NodeKeyRegistry.from_directory(tmp_path / "keys")


def test_signed_disclosures_pass(tmp_path: Path) -> None:
    chunks, registry = _upload(tmp_path)
    last = chunks[-1]
    assert last.attestation is not None and last.record_privacy == SPENT and last.masked_class_counts == (5, 7)
    verified = _stage(tmp_path, chunks).finish(last.attestation, registry, PhaseSeconds(),
                                               record_privacy=last.record_privacy,
                                               masked_class_counts=last.masked_class_counts)
    assert verified.record_privacy == SPENT


@pytest.mark.parametrize("tamper", [
    {"record_privacy": replace(SPENT, epsilon=0.1)},  # a hospital made to look more private than it is
    {"record_privacy": replace(SPENT, unit="image")},
    {"record_privacy": None},  # the privacy statement dropped
    {"masked_class_counts": (5, 8)},
    {"masked_class_counts": ()},
], ids=["lower-epsilon", "other-unit", "dropped", "other-counts", "counts-dropped"])
def test_altered_disclosures_are_refused(tmp_path: Path, tamper: dict[str, object]) -> None:
    chunks, registry = _upload(tmp_path)
    last = replace(chunks[-1], **tamper)
    assert last.attestation is not None
    with pytest.raises(DigestMismatchError, match="not what its signature covers"):
        _stage(tmp_path, [*chunks[:-1], last]).finish(last.attestation, registry, PhaseSeconds(),
                                                       record_privacy=last.record_privacy,
                                                       masked_class_counts=last.masked_class_counts)
