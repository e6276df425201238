"""Parallel decryption on the key authority's worker processes equals serial decryption, refusals included."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from services.common.errors import DecryptionIntegrityError
from services.common.secure_sum.ckks_params import ckks_parameters
from services.common.secure_sum.he_codec import encrypt_rows
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import make_secret_context

pytestmark = pytest.mark.unit
PARAMS = ckks_parameters(8)


def test_parallel_decryption_equals_serial_decryption_and_refuses_alike() -> None:
    secret = make_secret_context(PARAMS)
    rng = np.random.default_rng(4)
    chunks = [encrypt_rows(secret, rng.integers(0, 1 << 30, (rows, PARAMS.slots)).astype(np.float64))
              for rows in (3, 1, 2, 2)]
    with DecryptionPool(secret, 2) as parallel:
        serial = DecryptionPool(secret, 0).slot_integers(chunks, PARAMS.slots)
        assert all(np.array_equal(a, b) for a, b in zip(parallel.slot_integers(chunks, PARAMS.slots), serial,
                                                         strict=True))
        not_integers = [bytes(ts.ckks_vector(secret, [0.5] * PARAMS.slots).serialize())]
        with pytest.raises(DecryptionIntegrityError):
            parallel.slot_integers([chunks[0], not_integers], PARAMS.slots)


@pytest.mark.parametrize(("cores", "expected"), [(1, 0), (2, 0), (3, 2), (16, 4)])
def test_unset_decrypt_workers_take_all_cores_but_one_from_three_up_to_four(monkeypatch: pytest.MonkeyPatch, cores: int,
                                                                 expected: int) -> None:
    from services.key_authority import config

    monkeypatch.setattr(config, "usable_cores", lambda: float(cores))
    assert config.KeyAuthoritySettings(insecure=True).decryption_processes() == expected
    assert config.KeyAuthoritySettings(insecure=True, decrypt_workers=0).decryption_processes() == 0
