"""Decrypt an authorized sum, all or nothing: every chunk is checked before any is decrypted, every slot is
decrypted and rounded before any value is returned, and only field integers mod 2^bits ever leave here."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from services.common.errors import MalformedChunkError
from services.common.protocol.chunking import ciphertexts_in_chunk
from services.common.protocol.round_plan import SumLayout
from services.common.protocol.upload import DecryptManifest
from services.common.runtime.tracing import span
from services.common.secure_sum.he_codec import CiphertextShape, check_ciphertext
from services.common.secure_sum.packing import unpack_fields
from services.common.secure_sum.pairwise_masks import PeerMask, mask_values
from services.key_authority.decryption_pool import DecryptionPool
from services.key_authority.key_store import KeyMaterial


def checked_chunks(keys: KeyMaterial, manifest: DecryptManifest, chunks: Iterable[tuple[int, list[bytes]]]
                   ) -> list[list[bytes]]:
    """Every chunk of the sum, in order, each with exactly the ciphertexts the attested upload length requires and
    each ciphertext of this key's exact shape; a refusal naming the first that is not."""
    layout, shape = keys.layout_for(manifest.layout), CiphertextShape.of(keys.secret_context)
    received: list[list[bytes]] = []
    for expected_index, (index, ciphertexts) in enumerate(chunks):
        if index != expected_index or expected_index >= manifest.chunk_count:
            raise MalformedChunkError(f"expected chunk {expected_index} of {manifest.chunk_count}, got {index}")
        wanted = ciphertexts_in_chunk(index, manifest.value_count, layout, slots=keys.params.slots,
                                      chunk_ciphertexts=manifest.chunk_ciphertexts)
        if len(ciphertexts) != wanted:
            raise MalformedChunkError(f"chunk {index} carries {len(ciphertexts)} ciphertexts; {manifest.value_count} "
                                      f"values in chunks of {manifest.chunk_ciphertexts} need {wanted}")
        for ciphertext in ciphertexts:
            check_ciphertext(keys.secret_context, ciphertext, shape)
        received.append(ciphertexts)
    if len(received) != manifest.chunk_count:
        raise MalformedChunkError(f"the sum ended after {len(received)} of {manifest.chunk_count} chunks")
    return received


def decrypt_checked(keys: KeyMaterial, manifest: DecryptManifest, chunks: list[list[bytes]],
                    *, unmasks: list[PeerMask], pool: DecryptionPool | None = None) -> list[np.ndarray]:
    """Each chunk's field values mod 2^bits (little-endian, 4 bytes in the update layout, 8 in the statistics
    one), less the participants' authority masks for the manifest's own scope (`unmasks`): a sum of any other
    uploads keeps masks of its own and comes out uniform. Rounded here: CKKS IND-CPA-D (Li and Micciancio, 2021);
    a slot far from an integer refuses the whole sum. `pool` decrypts the chunks in parallel on the key authority's
    own worker processes; without it, one after another here."""
    layout = keys.layout_for(manifest.layout)
    dtype = "<u8" if manifest.layout is SumLayout.STATISTICS else "<u4"
    remaining, start, fields = manifest.value_count, 0, []
    with span("ka.decrypt_slots", chunks=len(chunks)):
        decrypted = (pool or DecryptionPool(keys.secret_context, 0)).slot_integers(chunks, keys.params.slots)
    with span("ka.unmask", participants=len(unmasks)):
        for slot_integers in decrypted:
            count = min(remaining, slot_integers.size * layout.fields_per_slot)
            unmasked = unpack_fields(slot_integers, layout, count) + mask_values(unmasks, start, count, layout.bits)
            fields.append(np.mod(unmasked, layout.modulus).astype(dtype))
            remaining -= count
            start += count
    return fields
