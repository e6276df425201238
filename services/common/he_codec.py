"""CKKS encryption of packed slot vectors, blind summation, and rounded decryption."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tenseal as ts

from services.common.errors import DecryptionIntegrityError, MalformedChunkError

# A decrypted slot further than this from an integer means the ciphertext was not
# a valid sum (overflow, corruption or a crafted input); nothing is returned then.
# A valid sum's noise stays SAFETY_SIGMAS (10) standard deviations below 1/2
# (ckks_params), so 0.45 is still over 9 of them: never hit by a valid sum of
# independent encryptions, while garbage (uniform errors) exceeds it in ~10% of slots.
MAX_ROUNDING_DISTANCE = 0.45


def slot_matrix(slot_values: np.ndarray, slots: int) -> np.ndarray:
    """Slot integers as float64 rows of `slots`, zero-padded to whole ciphertexts."""
    rows = -(-slot_values.size // slots)
    matrix = np.zeros((rows, slots), dtype=np.float64)
    matrix.reshape(-1)[: slot_values.size] = slot_values
    return matrix


def encrypt_rows(context: ts.Context, rows: np.ndarray) -> list[bytes]:
    return [bytes(ts.ckks_vector(context, row).serialize()) for row in rows]


def deserialize_ciphertext(context: ts.Context, payload: bytes) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(context, payload)
    except Exception as error:  # TenSEAL raises bare exceptions on malformed bytes.
        raise MalformedChunkError(f"ciphertext does not deserialize: {error}") from error


class RunningCiphertextSum:
    """Per-chunk running sums of ciphertexts; the aggregator's only copy of the data."""

    def __init__(self, public_context: ts.Context, chunk_count: int) -> None:
        if public_context.is_private():
            raise ValueError("the aggregator must never hold a secret-key context")
        self._context = public_context
        self._sums: list[list[ts.CKKSVector] | None] = [None] * chunk_count
        self.contributions = 0

    @property
    def chunk_count(self) -> int:
        return len(self._sums)

    def parse_chunk(self, index: int, payloads: Sequence[bytes]) -> list[ts.CKKSVector]:
        """Deserialize a chunk before folding, so a bad chunk is refused before it touches a sum."""
        if not 0 <= index < len(self._sums):
            raise MalformedChunkError(f"chunk index {index} outside 0..{len(self._sums) - 1}")
        expected = self._sums[index]
        if expected is not None and len(expected) != len(payloads):
            raise MalformedChunkError(f"chunk {index} has {len(payloads)} ciphertexts, expected {len(expected)}")
        return [deserialize_ciphertext(self._context, payload) for payload in payloads]

    def fold(self, index: int, ciphertexts: list[ts.CKKSVector]) -> None:
        current = self._sums[index]
        if current is None:
            self._sums[index] = ciphertexts
            return
        for total, addend in zip(current, ciphertexts, strict=True):
            total += addend

    def serialized_chunk(self, index: int) -> list[bytes]:
        current = self._sums[index]
        if current is None:
            raise MalformedChunkError(f"chunk {index} received no contribution")
        return [bytes(ciphertext.serialize()) for ciphertext in current]


def decrypt_to_slot_integers(secret_context: ts.Context, payloads: Sequence[bytes], slots: int) -> np.ndarray:
    """Decrypt and round every slot; only these integers ever leave this function.

    Rounded here: CKKS is not IND-CPA-D secure (Li and Micciancio, EUROCRYPT 2021);
    a raw approximate decryption leaks the encryption noise and, through it, the
    secret key. Rounding to integers removes that noise from anything returned.
    """
    if not secret_context.is_private():
        raise ValueError("decryption needs the secret-key context")
    out = np.empty(len(payloads) * slots, dtype=np.int64)
    for position, payload in enumerate(payloads):
        raw = np.asarray(deserialize_ciphertext(secret_context, payload).decrypt(), dtype=np.float64)
        rounded = np.rint(raw)
        if raw.size != slots or np.max(np.abs(raw - rounded)) > MAX_ROUNDING_DISTANCE:
            raise DecryptionIntegrityError(
                f"ciphertext {position} does not decrypt to integers: not a valid aggregate"
            )
        out[position * slots : (position + 1) * slots] = rounded.astype(np.int64)
    return out
