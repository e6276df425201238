"""A node's parallel encode-and-encrypt pipeline, one upload chunk per task.

TenSEAL holds the GIL while it encrypts (2 threads ran 1.05x as fast as one), so
the work runs in worker processes, each holding the public context once. Every
task takes one chunk of the scaled update and does the rest of the node's work on
it: conditional rounding (against the chunk's own bound, see
`quantize.rounded_l2_bound` for the K-piece sensitivity), noise, mod 2^b, packing
and encryption. Chunks come back in order, ready to stream.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from services.common.chunking import chunk_bounds, values_per_chunk
from services.common.ckks_params import load_public_context
from services.common.he_codec import encrypt_rows, slot_matrix
from services.common.packing import FieldLayout, pack_fields, to_modular
from services.common.pairwise_masks import PeerMask, mask_values
from services.common.update_codec import QuantizationPlan, encode_piece

_worker_context: ts.Context | None = None


@dataclass(frozen=True)
class EncryptedChunk:
    index: int
    ciphertexts: list[bytes]
    fields: np.ndarray | None  # the chunk's integers mod 2^b, only when asked for


@dataclass(frozen=True)
class _Task:
    index: int
    scaled: np.ndarray
    plan: QuantizationPlan
    layout: FieldLayout
    slots: int
    seed: np.random.SeedSequence
    keep_fields: bool
    start: int  # the chunk's first value in the upload: where its slice of the masks begins
    masks: tuple[PeerMask, ...]  # the pairwise masks: in the kept fields too
    authority: tuple[PeerMask, ...]  # the mask shared with the key authority: encrypted, not kept


def _run(context: ts.Context, task: _Task) -> EncryptedChunk:
    size, bits = task.scaled.size, task.plan.bits
    mask = mask_values(task.masks, task.start, size, bits) if task.masks else None
    fields = encode_piece(task.scaled, task.plan, np.random.default_rng(task.seed), mask)
    sent = (to_modular(fields + mask_values(task.authority, task.start, size, bits), bits) if task.authority
            else fields)
    ciphertexts = encrypt_rows(context, slot_matrix(pack_fields(sent, task.layout), task.slots))
    kept = fields.astype(np.min_scalar_type((1 << task.plan.bits) - 1)) if task.keep_fields else None
    return EncryptedChunk(task.index, ciphertexts, kept)


def _init_worker(public_context: bytes) -> None:
    # Per-process state is the point of a worker: it holds the context once, not per task.
    global _worker_context
    _worker_context = load_public_context(public_context)


def _run_in_worker(task: _Task) -> EncryptedChunk:
    assert _worker_context is not None, "worker used before its initializer ran"
    return _run(_worker_context, task)


class EncryptionPool:
    """Encodes and encrypts upload chunks on `workers` processes (0: in this process)."""

    def __init__(self, public_context: bytes, workers: int) -> None:
        self._context = load_public_context(public_context)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._look_ahead = 4 * max(workers, 1)
        if workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(public_context,),
            )

    def encode_and_encrypt(
        self,
        scaled: np.ndarray,
        plan: QuantizationPlan,
        layout: FieldLayout,
        slots: int,
        chunk_ciphertexts: int,
        seed: np.random.SeedSequence,
        keep_fields: bool = False,
        masks: tuple[PeerMask, ...] = (),
        authority: tuple[PeerMask, ...] = (),
    ) -> Iterator[EncryptedChunk]:
        """The scaled update's upload chunks, in order; `seed` spawns one stream per chunk; `masks` are this node's
        pairwise masks for the round attempt's participant set (none in a test of the codec alone), `authority` its
        mask with the key authority. Kept fields hold the pairwise masks only: they cancel in the sum, so the kept
        fields of all participants sum to what the key authority returns."""
        bounds = list(chunk_bounds(scaled.size, values_per_chunk(layout, slots, chunk_ciphertexts)))
        if plan.rounding_pieces != len(bounds):
            raise ValueError(f"plan accounts for {plan.rounding_pieces} rounding pieces, upload has {len(bounds)}")
        seeds = seed.spawn(len(bounds))
        tasks = (_Task(i, scaled[a:b], plan, layout, slots, seeds[i], keep_fields, a, masks, authority)
                 for i, (a, b) in enumerate(bounds))
        if self._executor is None:
            for task in tasks:
                yield _run(self._context, task)
            return
        # Bounded look-ahead keeps memory at a few chunks while both workers stay busy.
        pending: list[concurrent.futures.Future[EncryptedChunk]] = []
        for task in tasks:
            pending.append(self._executor.submit(_run_in_worker, task))
            if len(pending) >= self._look_ahead:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> EncryptionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
