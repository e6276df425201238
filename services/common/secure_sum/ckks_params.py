"""The one place where CKKS parameters are decided, and why.

Choice: N = 8192, coefficient modulus [60, 60] (one 60-bit data prime plus the
special prime TenSEAL needs for its relinearization keys), public-key encryption.
- Security: the HomomorphicEncryption.org standard allows at most 218 bits of
  coefficient modulus at N = 8192 for 128-bit classical security (ternary secret);
  we use 120.
- Size: a fresh ciphertext at the data level is 2 x 8192 coefficients of one prime,
  131 kB serialized, i.e. 32 bytes per slot. Packing 3 integer fields per slot gives
  under 11 bytes per model parameter.
- Exactness: a slot of the decrypted sum is exact after rounding when
  (a) the scaled sum fits the data prime: slot_bits + scale_bits <= 58
      (coefficients are bounded by the largest slot value, and SEAL refuses
      encodings at or above 2^59; one more bit of margin is kept), and
  (b) the encryption noise of n_max summed ciphertexts stays far below 1/2:
      measured here, a fresh ciphertext's decoded noise has standard deviation
      about FRESH_NOISE_AT_UNIT_SCALE / scale per slot, so we choose the smallest
      power-of-two scale with SAFETY_SIGMAS standard deviations below 1/2, and
  (c) the slot value stays well inside double precision (SEAL decodes to double).
`field_layout` refuses, at start-up, any configuration that violates these.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import tenseal as ts

from services.common.errors import CkksParameterError
from services.common.secure_sum.packing import FieldLayout, headroom_bits

POLY_MODULUS_DEGREE = 8192
COEFF_MOD_BIT_SIZES = (60, 60)
DATA_PRIME_BITS = COEFF_MOD_BIT_SIZES[0]
# Std-dev of one fresh ciphertext's decoded noise, times the scale (measured: tests pin it).
FRESH_NOISE_AT_UNIT_SCALE = 2640.0
SAFETY_SIGMAS = 10.0
# Double precision keeps integers exact to 2^53; SEAL's decode FFT loses a few more bits.
MAX_EXACT_SLOT_BITS = 45
DEFAULT_FIELDS_PER_SLOT = 3


@dataclass(frozen=True)
class CkksParameters:
    poly_modulus_degree: int
    coeff_mod_bit_sizes: tuple[int, ...]
    scale_bits: int

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def scale(self) -> float:
        return float(2**self.scale_bits)


def scale_bits_for(max_participants: int) -> int:
    """Smallest power-of-two scale at which the n_max-fold sum's noise is negligible."""
    summed_noise = FRESH_NOISE_AT_UNIT_SCALE * math.sqrt(max_participants)
    return math.ceil(math.log2(SAFETY_SIGMAS * summed_noise / 0.5))


def ckks_parameters(max_participants: int) -> CkksParameters:
    return CkksParameters(POLY_MODULUS_DEGREE, COEFF_MOD_BIT_SIZES, scale_bits_for(max_participants))


def slot_capacity_bits(params: CkksParameters) -> int:
    return min(DATA_PRIME_BITS - 2 - params.scale_bits, MAX_EXACT_SLOT_BITS)


def field_layout(
    params: CkksParameters,
    max_participants: int,
    bits: int | None = None,
    fields_per_slot: int = DEFAULT_FIELDS_PER_SLOT,
) -> FieldLayout:
    """The packing layout for `bits`-bit values (the largest that fits when None), checked."""
    capacity = slot_capacity_bits(params)
    headroom = headroom_bits(max_participants)
    widest = capacity // fields_per_slot - headroom
    chosen = widest if bits is None else bits
    if chosen < 2 or chosen > widest:
        raise CkksParameterError(
            f"cannot carry {fields_per_slot} fields of {chosen} bits + {headroom} headroom bits "
            f"(n_max={max_participants}) exactly: scale 2^{params.scale_bits} on a "
            f"{DATA_PRIME_BITS}-bit data prime leaves {capacity} bits per slot, "
            f"so at most {widest} bits per field"
        )
    return FieldLayout(bits=chosen, max_participants=max_participants, fields_per_slot=fields_per_slot)


def statistics_layout(params: CkksParameters, max_participants: int) -> FieldLayout:
    """One field per slot, as wide as exactness allows: for sums whose useful signal sits far below their largest
    value (the head refit's feature statistics), which an update layout's fields would round away."""
    return field_layout(params, max_participants, None, fields_per_slot=1)


def make_secret_context(params: CkksParameters) -> ts.Context:
    """A full context with the secret key. Only the key authority calls this."""
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
    )
    context.global_scale = params.scale
    return context


def public_context_bytes(context: ts.Context) -> bytes:
    """The serialized public half: public key and parameters, no secret key."""
    return bytes(
        context.serialize(
            save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
        )
    )


def load_public_context(serialized: bytes, threads: int = 1) -> ts.Context:
    # One thread: TenSEAL's pool only adds overhead to single-ciphertext work;
    # parallelism comes from worker processes (`encryption_pool`).
    context = ts.context_from(serialized, n_threads=threads)
    if context.is_private():
        raise CkksParameterError("refusing a context that carries a secret key")
    return context


def key_id(public_context: bytes) -> str:
    """Names a key pair by its public half, so every party can check it."""
    return hashlib.sha256(public_context).hexdigest()[:16]
