"""Decrypt an authorized sum chunk by chunk: rounded, unpacked field integers only ever leave here."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from services.common.errors import MalformedChunkError
from services.common.he_codec import decrypt_to_slot_integers
from services.common.packing import unpack_fields
from services.common.round_plan import SumLayout
from services.common.upload import DecryptManifest
from services.key_authority.key_store import KeyMaterial


def decrypt_sum(keys: KeyMaterial, manifest: DecryptManifest, chunks: Iterable[tuple[int, list[bytes]]]
                ) -> Iterator[np.ndarray]:
    """Each chunk's field values mod 2^bits (little-endian, 4 bytes in the update layout, 8 in the statistics
    one), in order; the manifest must already be authorized. Refuses chunks out of order, beyond the manifest's
    count, or a stream that ends before the manifest's values are delivered."""
    layout = keys.layout_for(manifest.layout)
    dtype = "<u8" if manifest.layout is SumLayout.STATISTICS else "<u4"
    remaining = manifest.value_count
    for expected_index, (index, ciphertexts) in enumerate(chunks):
        if index != expected_index or expected_index >= manifest.chunk_count:
            raise MalformedChunkError(f"expected chunk {expected_index} of {manifest.chunk_count}")
        slot_integers = decrypt_to_slot_integers(keys.secret_context, ciphertexts, keys.params.slots)
        count = min(remaining, slot_integers.size * layout.fields_per_slot)
        remaining -= count
        yield unpack_fields(slot_integers, layout, count).astype(dtype)
    if remaining:
        raise MalformedChunkError(f"stream ended with {remaining} values of the manifest undelivered")
