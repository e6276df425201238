"""Decrypt an authorized sum, all or nothing: every chunk is checked as it arrives and decrypted while the next
one travels, every slot is decrypted and rounded before any value is returned, and only field integers mod 2^bits
ever leave here."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from services.common.errors import DecryptionIntegrityError, MalformedChunkError
from services.common.protocol.chunking import ciphertexts_in_chunk
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.upload import DecryptManifest
from services.common.runtime.tracing import annotate
from services.common.secure_sum.he_codec import CiphertextShape, check_ciphertext
from services.common.secure_sum.packing import unpack_fields
from services.common.secure_sum.pairwise_masks import PeerMask, mask_values
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import KeyMaterial


def decrypt_stream(keys: KeyMaterial, manifest: DecryptManifest, chunks: Iterable[tuple[int, list[bytes]]],
                   *, unmasks: list[PeerMask], claim: Callable[[], None],
                   pool: DecryptionPool | None = None) -> list[np.ndarray]:
    """Each chunk's field values mod 2^bits (little-endian, 4 bytes in the update layout, 8 in the statistics one),
    less the participants' authority masks for the manifest's own scope (`unmasks`): a sum of any other uploads
    keeps masks of its own and comes out uniform.

    Each chunk is checked as it arrives (exactly the ciphertexts the attested upload length requires, each of this
    key's exact shape; a refusal names the first that is not), then decrypted and rounded while the next one is on
    its way: on `pool`'s worker processes, or here. `claim` (the caller's ledger entry, durable) runs once, after the
    first chunk is checked and before anything is decrypted: a round is decrypted at most once. A chunk that
    decrypts off the integers is noted, and the stream is read, checked and decrypted to its end all the same; only
    then is the sum refused, without saying which chunk, so a refusal that depends on the secret key comes once per
    round and tells the aggregator nothing it could act on within the stream. Nothing is returned before every
    chunk has arrived, been checked and been decrypted: a malformed chunk, a short stream, or a slot far from an
    integer (CKKS IND-CPA-D, Li and Micciancio 2021: only rounded integers ever leave) refuses the whole sum."""
    layout, shape = keys.layout_for(manifest.layout), CiphertextShape.of(keys.secret_context)
    dtype = "<u8" if manifest.layout is SumLayout.STATISTICS else "<u4"
    stream = (pool or DecryptionPool(keys.secret_context, 0)).stream(keys.params.slots)
    fields: list[np.ndarray] = []
    position = {"start": 0, "remaining": manifest.value_count}
    seconds = {"decrypt_seconds": 0.0, "unmask_seconds": 0.0, "tail_seconds": 0.0}

    def unmask(slot_integers: np.ndarray) -> None:
        started = time.perf_counter()
        count = min(position["remaining"], slot_integers.size * layout.fields_per_slot)
        unmasked = unpack_fields(slot_integers, layout, count) + mask_values(unmasks, position["start"], count,
                                                                            layout.bits)
        fields.append(np.mod(unmasked, layout.modulus).astype(dtype))
        position["remaining"] -= count
        position["start"] += count
        seconds["unmask_seconds"] += time.perf_counter() - started

    received, integral = 0, True

    def take(result: np.ndarray | DecryptionIntegrityError) -> None:
        nonlocal integral
        if isinstance(result, DecryptionIntegrityError):
            integral = False  # said only once the whole stream has arrived: never which chunk, never early
        else:
            unmask(result)

    try:
        for expected_index, (index, ciphertexts) in enumerate(chunks):
            if index != expected_index or expected_index >= manifest.chunk_count:
                raise MalformedChunkError(f"expected chunk {expected_index} of {manifest.chunk_count}, got {index}")
            wanted = ciphertexts_in_chunk(index, manifest.value_count, layout, slots=keys.params.slots,
                                          chunk_ciphertexts=manifest.chunk_ciphertexts)
            if len(ciphertexts) != wanted:
                raise MalformedChunkError(f"chunk {index} carries {len(ciphertexts)} ciphertexts; "
                                          f"{manifest.value_count} values in chunks of {manifest.chunk_ciphertexts} "
                                          f"need {wanted}")
            parsed = [check_ciphertext(keys.secret_context, ciphertext, shape) for ciphertext in ciphertexts]
            if expected_index == 0:
                claim()
            started = time.perf_counter()
            stream.submit(ciphertexts, parsed)  # in this process: decrypted now; on workers: handed over
            seconds["decrypt_seconds"] += time.perf_counter() - started
            received += 1
            for result in stream.ready():
                take(result)
        if received != manifest.chunk_count:
            raise MalformedChunkError(f"the sum ended after {received} of {manifest.chunk_count} chunks")
        tail = time.perf_counter()
        for result in stream.rest():
            take(result)
        seconds["tail_seconds"] = time.perf_counter() - tail  # after the last chunk arrived
    except BaseException:
        stream.cancel()
        raise
    annotate(**seconds)
    if not integral:
        raise DecryptionIntegrityError("the sum does not decrypt to integers in every slot: not a valid aggregate; "
                                       "nothing is returned, and the round stays spent")
    return fields
