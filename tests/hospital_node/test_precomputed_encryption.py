"""Offline/online encryption: fresh encryptions of zero made ahead, each used once, for one round attempt only."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from services.common.ckks_params import ckks_parameters, field_layout
from services.common.he_codec import decrypt_to_slot_integers, slot_matrix
from services.common.packing import pack_fields
from services.hospital_node import encryption_pool
from services.hospital_node.encryption_pool import (
    EncryptionPool,
    encrypt_rows_from_stock,
    fill_stock,
    upload_ciphertexts,
)
from services.key_authority.key_store import make_secret_context

pytestmark = pytest.mark.unit
PARAMS = ckks_parameters(8)


@pytest.fixture(scope="module")
def secret() -> ts.Context:
    return make_secret_context(PARAMS)


@pytest.fixture(autouse=True)
def empty_stock() -> None:
    encryption_pool._stock.clear()


def _rows(seed: int, count: int) -> np.ndarray:
    layout = field_layout(PARAMS, 8, None)
    fields = np.random.default_rng(seed).integers(0, 1 << layout.bits, count * PARAMS.slots * layout.fields_per_slot)
    return slot_matrix(pack_fields(fields, layout), PARAMS.slots)


def test_the_precomputed_path_decrypts_exactly_as_the_direct_path(secret: ts.Context) -> None:
    rows = _rows(1, 3)
    fill_stock(secret, "5:1", 3)
    precomputed = encrypt_rows_from_stock(secret, rows, "5:1")
    assert encryption_pool._stock["5:1"] == []  # all three were taken
    direct = encrypt_rows_from_stock(secret, rows, None)
    for path in (precomputed, direct):
        assert np.array_equal(decrypt_to_slot_integers(secret, path, PARAMS.slots), rows.reshape(-1))


def test_no_precomputed_encryption_is_used_twice(secret: ts.Context) -> None:
    fill_stock(secret, "5:1", 4)
    zeros = np.zeros((4, PARAMS.slots))
    sent = encrypt_rows_from_stock(secret, zeros, "5:1")
    assert len(set(sent)) == 4  # the same plaintext, four distinct random components
    more = encrypt_rows_from_stock(secret, zeros[:2], "5:1")  # the stock is empty: fresh encryptions
    assert not set(more) & set(sent)
    assert np.array_equal(decrypt_to_slot_integers(secret, more, PARAMS.slots), zeros[:2].reshape(-1))


def test_an_abandoned_round_attempt_leaves_no_stock_behind(secret: ts.Context) -> None:
    fill_stock(secret, "5:1", 3)
    fill_stock(secret, "6:1", 1)  # the next round: round 5's stock is dropped, never used
    assert set(encryption_pool._stock) == {"6:1"} and len(encryption_pool._stock["6:1"]) == 1
    encrypt_rows_from_stock(secret, _rows(2, 1), "6:2")  # another attempt: round 6 attempt 1's goes too
    assert set(encryption_pool._stock) == {"6:2"} and encryption_pool._stock["6:2"] == []


def test_worker_processes_precompute_and_the_upload_uses_them(secret: ts.Context) -> None:
    """Through the pool's worker processes: a precomputed upload decrypts to exactly the fields it encoded, the
    same fields a direct upload with the same seed encodes, in other ciphertexts."""
    from services.common.ckks_params import public_context_bytes
    from services.common.noise import NoiseKind
    from services.common.packing import unpack_fields
    from services.common.update_codec import plan_quantization, scale_update

    public = public_context_bytes(secret)
    layout = field_layout(PARAMS, 8, None)
    dimension = PARAMS.slots * layout.fields_per_slot * 3 + 11
    count = upload_ciphertexts(dimension, layout, PARAMS.slots, 1)
    assert count == 4  # three full ciphertexts and one for the last 11 values
    plan = plan_quantization(dimension, 1.0, layout.bits, 8, 2, NoiseKind.SKELLAM, 4.0, rounding_pieces=count)
    update = scale_update(np.random.default_rng(5).normal(0, 0.01, dimension), plan)
    with EncryptionPool(public, workers=2) as pool:
        assert pool.precompute("7:1", count)
        assert pool.precompute_seconds() > 0
        precomputed = list(pool.encode_and_encrypt(update, plan, layout, PARAMS.slots, 1, np.random.SeedSequence(9),
                                                   keep_fields=True, tag="7:1"))
        direct = list(pool.encode_and_encrypt(update, plan, layout, PARAMS.slots, 1, np.random.SeedSequence(9),
                                              keep_fields=True))
    for a, b in zip(precomputed, direct, strict=True):
        assert a.fields is not None and np.array_equal(a.fields, b.fields)
        assert not set(a.ciphertexts) & set(b.ciphertexts)
        decrypted = decrypt_to_slot_integers(secret, a.ciphertexts, PARAMS.slots)
        assert np.array_equal(unpack_fields(decrypted, layout, a.fields.size), a.fields)
