"""CKKS encryption of packed slot vectors, blind summation, and rounded decryption."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from services.common.errors import DecryptionIntegrityError, MalformedChunkError
from services.common.secure_sum.ckks_params import COEFF_MOD_BIT_SIZES

# A decrypted slot further than this from an integer means the ciphertext was not
# a valid sum (overflow, corruption or a crafted input); nothing is returned then.
# A valid sum's noise stays SAFETY_SIGMAS (10) standard deviations below 1/2
# (ckks_params), so 0.45 is still over 9 of them: never hit by a valid sum of
# independent encryptions, while garbage (uniform errors) exceeds it in ~10% of slots.
MAX_ROUNDING_DISTANCE = 0.45
# A ciphertext at the data level holds every prime of the chain but the special one.
DATA_LEVEL_PRIMES = len(COEFF_MOD_BIT_SIZES) - 1


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


@dataclass(frozen=True)
class CiphertextShape:
    """What every ciphertext of an upload or a sum must be, exactly: one CKKS ciphertext of two polynomials at
    the data level, at the key's scale, holding a full row of slots, serialized to exactly this many bytes."""

    serialized_bytes: int
    scale: float
    slots: int
    poly_modulus_degree: int

    @classmethod
    def of(cls, context: ts.Context) -> CiphertextShape:
        """Measured once from an encryption of zeros under `context` (public or secret)."""
        slots = context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2
        sample = ts.ckks_vector(context, np.zeros(slots))
        ciphertext = sample.ciphertext()[0]
        return cls(len(bytes(sample.serialize())), float(ciphertext.scale), slots, ciphertext.poly_modulus_degree())


def check_ciphertext(context: ts.Context, payload: bytes, shape: CiphertextShape) -> ts.CKKSVector:
    """The ciphertext, or a refusal naming what is wrong with it. Checked before it touches a sum or a decryption:
    a padded message (unknown protobuf fields: the exact length refuses it, and with it any staging or memory beyond
    an honest upload's), another scale, extra polynomials or another level would make a round's sum fail or let
    more through than one ciphertext's worth of values. A message of the exact length that parses to a ciphertext of
    the exact shape is just a ciphertext, whatever its bytes: any node can send one."""
    if len(payload) != shape.serialized_bytes:
        raise MalformedChunkError(f"a ciphertext of {len(payload)} bytes; this key's are {shape.serialized_bytes}")
    vector = deserialize_ciphertext(context, payload)
    ciphertexts = vector.ciphertext()
    if len(ciphertexts) != 1 or vector.size() != shape.slots:
        raise MalformedChunkError(f"a ciphertext of {len(ciphertexts)} parts and {vector.size()} slots; "
                                  f"expected 1 part of {shape.slots}")
    ciphertext = ciphertexts[0]
    if (ciphertext.size(), ciphertext.coeff_modulus_size(), ciphertext.poly_modulus_degree()) != (
            2, DATA_LEVEL_PRIMES, shape.poly_modulus_degree):
        raise MalformedChunkError(f"a ciphertext of {ciphertext.size()} polynomials, {ciphertext.coeff_modulus_size()} "
                                  f"primes and degree {ciphertext.poly_modulus_degree()}; expected 2, "
                                  f"{DATA_LEVEL_PRIMES} and {shape.poly_modulus_degree}")
    if float(ciphertext.scale) != shape.scale:
        raise MalformedChunkError(f"a ciphertext at scale {ciphertext.scale}; this key's is {shape.scale}")
    return vector


class RunningCiphertextSum:
    """Per-chunk running sums of ciphertexts; the aggregator's only copy of the data."""

    def __init__(self, public_context: ts.Context, chunk_count: int) -> None:
        if public_context.is_private():
            raise ValueError("the aggregator must never hold a secret-key context")
        self._context = public_context
        self._shape = CiphertextShape.of(public_context)
        self._sums: list[list[ts.CKKSVector] | None] = [None] * chunk_count
        self._folded = [0] * chunk_count  # uploads folded into each chunk's sum
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
        return [check_ciphertext(self._context, payload, self._shape) for payload in payloads]

    def fold(self, index: int, ciphertexts: list[ts.CKKSVector]) -> None:
        current = self._sums[index]
        self._folded[index] += 1
        if current is None:
            self._sums[index] = ciphertexts
            return
        for total, addend in zip(current, ciphertexts, strict=True):
            total += addend

    def unfold(self, index: int, ciphertexts: list[ts.CKKSVector]) -> None:
        """Subtract what `fold` added. Ciphertext addition is exact modular arithmetic on the polynomials' coefficients,
        so the sum comes back bit for bit as it was before the fold."""
        current = self._sums[index]
        if current is None:
            raise MalformedChunkError(f"chunk {index} has nothing folded to subtract")
        self._folded[index] -= 1
        if self._folded[index] == 0:
            self._sums[index] = None  # the last one out: as never folded (SEAL refuses an all-zero ciphertext)
            return
        for total, addend in zip(current, ciphertexts, strict=True):
            total -= addend

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
    return rounded_slot_integers([deserialize_ciphertext(secret_context, payload) for payload in payloads], slots)


def rounded_slot_integers(vectors: Sequence[ts.CKKSVector], slots: int) -> np.ndarray:
    """`decrypt_to_slot_integers` of ciphertexts already deserialized under the secret-key context (by
    `check_ciphertext`, say), so that each is parsed once."""
    out = np.empty(len(vectors) * slots, dtype=np.int64)
    for position, vector in enumerate(vectors):
        raw = np.asarray(vector.decrypt(), dtype=np.float64)
        rounded = np.rint(raw)
        if raw.size != slots or np.max(np.abs(raw - rounded)) > MAX_ROUNDING_DISTANCE:
            raise DecryptionIntegrityError(
                f"ciphertext {position} does not decrypt to integers: not a valid aggregate"
            )
        out[position * slots : (position + 1) * slots] = rounded.astype(np.int64)
    return out
