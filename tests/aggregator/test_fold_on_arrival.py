"""Chunks are folded as they arrive; a stream that fails, or is in flight at the seal, is subtracted again exactly."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tenseal as ts

from services.aggregator.round_state import new_round_state
from services.aggregator.submission_staging import _LENGTH
from services.common.secure_sum.ckks_params import ckks_parameters, load_public_context, public_context_bytes
from services.common.secure_sum.he_codec import RunningCiphertextSum, decrypt_to_slot_integers, encrypt_rows
from services.key_authority.key_store import make_secret_context
from tests.plans import PLAN

pytestmark = pytest.mark.unit
PARAMS = ckks_parameters(8)


@pytest.fixture(scope="module")
def keys() -> tuple[ts.Context, ts.Context]:
    secret = make_secret_context(PARAMS)
    return secret, load_public_context(public_context_bytes(secret))


def _upload(secret: ts.Context, seed: int, rows: int = 2) -> list[bytes]:
    values = np.random.default_rng(seed).integers(0, 1 << 20, (rows, PARAMS.slots)).astype(np.float64)
    return encrypt_rows(secret, values)


def _staged(path: Path, payloads: list[bytes]) -> Path:
    path.write_bytes(b"".join(_LENGTH.pack(len(p)) + p for p in payloads))
    return path


def test_fold_then_subtract_leaves_the_sum_bit_identical_to_never_folding(keys) -> None:  # type: ignore[no-untyped-def]
    secret, public = keys
    total = RunningCiphertextSum(public, 1)
    for seed in (1, 2):
        total.fold(0, total.parse_chunk(0, _upload(secret, seed)))
    before = total.serialized_chunk(0)
    late = _upload(secret, 3)
    total.fold(0, total.parse_chunk(0, late))
    assert total.serialized_chunk(0) != before
    total.unfold(0, total.parse_chunk(0, late))
    assert total.serialized_chunk(0) == before  # every byte


def test_a_stream_in_flight_at_the_seal_or_abandoned_is_subtracted_from_its_staged_copy(
        keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    secret, public = keys
    plan = replace(PLAN, participants=("a", "b", "c"), transfer=replace(PLAN.transfer, chunk_count=1))
    state = new_round_state(plan, {"a", "b", "c"}, public)
    assert state.ciphertext_sum is not None
    total = state.ciphertext_sum
    uploads = {node: _upload(secret, seed) for seed, node in enumerate("abc")}
    for node in "abc":
        state.start_stream(node)
        staged = _staged(tmp_path / f"{node}.staged", uploads[node])
        state.fold_chunk(node, 0, total.parse_chunk(0, uploads[node]), staged)
    expected_ab = decrypt_to_slot_integers(secret, uploads["a"], PARAMS.slots) + decrypt_to_slot_integers(
        secret, uploads["b"], PARAMS.slots)
    state.abandon_stream("c")  # c's stream broke after its chunk was folded: subtracted again
    assert "c" not in state.partial and not state.corrupted
    state.seal()  # a and b never finished: in flight at the seal, both subtracted
    assert state.partial == {} and not state.corrupted
    # Nothing is left folded: the sum is as if no stream had come, and an upload folded now is exactly itself.
    with pytest.raises(Exception, match="received no contribution"):
        total.serialized_chunk(0)
    state_b = new_round_state(plan, {"a", "b"}, public)
    assert state_b.ciphertext_sum is not None
    for node in "ab":
        state_b.start_stream(node)
        state_b.fold_chunk(node, 0, state_b.ciphertext_sum.parse_chunk(0, uploads[node]),
                           _staged(tmp_path / f"{node}2.staged", uploads[node]))
    assert np.array_equal(decrypt_to_slot_integers(secret, state_b.ciphertext_sum.serialized_chunk(0), PARAMS.slots),
                          expected_ab)
