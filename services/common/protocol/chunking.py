"""The one chunking helper both ends use: fixed-size slices of a sequence or array."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from services.common.secure_sum.packing import FieldLayout

MODEL_CHUNK_VALUES = 1 << 18  # 1 MiB of float32 per model chunk


def chunk_count(total: int, chunk_size: int) -> int:
    if chunk_size < 1:
        raise ValueError(f"chunk size must be positive, got {chunk_size}")
    return -(-total // chunk_size)


def chunk_bounds(total: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of every chunk, in order."""
    for start in range(0, total, chunk_size):
        yield start, min(start + chunk_size, total)


def float32_chunks(values: np.ndarray, chunk_size: int = MODEL_CHUNK_VALUES) -> Iterator[bytes]:
    """Little-endian float32 bytes of `values`, `chunk_size` values at a time."""
    as_f32 = np.ascontiguousarray(values, dtype="<f4")
    for start, stop in chunk_bounds(as_f32.size, chunk_size):
        yield as_f32[start:stop].tobytes()


def float32_from_chunks(chunks: list[bytes], expected: int) -> np.ndarray:
    values = np.frombuffer(b"".join(chunks), dtype="<f4")
    if values.size != expected:
        raise ValueError(f"received {values.size} values, expected {expected}")
    return values.astype(np.float64)


def values_per_chunk(layout: FieldLayout, slots: int, chunk_ciphertexts: int) -> int:
    """Field values in one secure upload chunk of `chunk_ciphertexts` full ciphertexts."""
    return chunk_ciphertexts * slots * layout.fields_per_slot


def upload_chunk_count(dimension: int, layout: FieldLayout, slots: int, chunk_ciphertexts: int) -> int:
    return -(-dimension // values_per_chunk(layout, slots, chunk_ciphertexts))


def ciphertexts_in_chunk(index: int, dimension: int, layout: FieldLayout, *, slots: int, chunk_ciphertexts: int) -> int:
    """How many ciphertexts upload chunk `index` carries (the last chunk may be short)."""
    per_chunk = values_per_chunk(layout, slots, chunk_ciphertexts)
    values = min(per_chunk, dimension - index * per_chunk)
    return -(-values // (slots * layout.fields_per_slot))
