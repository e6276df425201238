"""A node's parallel encode-and-encrypt pipeline, one upload chunk per task.

TenSEAL holds the GIL while it encrypts (2 threads ran 1.05x as fast as one), so
the work runs in worker processes, each holding the public context once. Every
task takes one chunk of the scaled update and does the rest of the node's work on
it: conditional rounding (against the chunk's own bound, see
`quantize.rounded_l2_bound` for the K-piece sensitivity), noise, mod 2^b, packing
and encryption. Chunks come back in order, ready to stream.

Offline/online encryption (`precompute`). A CKKS public-key encryption of m is an
encryption of zero plus the encoding of m, and the encryption of zero, the expensive
part, does not depend on m. While the node trains, each worker process fills its own
stock of fresh encryptions of zero for the round attempt (tagged with it). After
training, a chunk's rows each take one from the stock of the process encrypting it:
encode, add, serialize. Each is popped, so none is used twice; a stock whose tag is not
the current one is dropped at the next task, so an abandoned round leaves nothing that a
later round could use. A process whose stock runs out encrypts directly.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
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
# This process's fresh encryptions of zero, for one round attempt (its tag) only.
_stock: dict[str, list[ts.CKKSVector]] = {}


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
    tag: str | None = None  # the round attempt whose precomputed encryptions of zero this task may use


def _current_stock(tag: str | None) -> list[ts.CKKSVector]:
    """This process's stock for `tag`, after dropping every other tag's (an earlier or abandoned attempt)."""
    for stale in [other for other in _stock if other != tag]:
        del _stock[stale]
    return _stock.setdefault(tag, []) if tag is not None else []


def fill_stock(context: ts.Context, tag: str, count: int) -> tuple[int, float]:
    """Add `count` fresh encryptions of zero to this process's stock for `tag`; (stock size, seconds taken)."""
    started = time.monotonic()
    stock = _current_stock(tag)
    zero = np.zeros(context.seal_context().data.first_context_data().parms().poly_modulus_degree() // 2)
    stock.extend(ts.ckks_vector(context, zero) for _ in range(count))
    return len(stock), time.monotonic() - started


def encrypt_rows_from_stock(context: ts.Context, rows: np.ndarray, tag: str | None) -> list[bytes]:
    """Each row encrypted: a precomputed encryption of zero of `tag` plus the row, popped so that it is never used
    again; a fresh encryption once the stock is empty (or without a tag)."""
    stock = _current_stock(tag)
    if not stock:
        return encrypt_rows(context, rows)
    encrypted = []
    for row in rows:
        if stock:
            ciphertext = stock.pop()
            ciphertext += row.tolist()  # encode at the context's scale and add: the online part
            encrypted.append(bytes(ciphertext.serialize()))
        else:
            encrypted.append(bytes(ts.ckks_vector(context, row).serialize()))
    return encrypted


def upload_ciphertexts(dimension: int, layout: FieldLayout, slots: int, chunk_ciphertexts: int) -> int:
    """How many ciphertexts an upload of `dimension` values holds: what a precompute should make."""
    return sum(-(-layout.slots_for(b - a) // slots)
               for a, b in chunk_bounds(dimension, values_per_chunk(layout, slots, chunk_ciphertexts)))


def _run(context: ts.Context, task: _Task) -> EncryptedChunk:
    size, bits = task.scaled.size, task.plan.bits
    mask = mask_values(task.masks, task.start, size, bits) if task.masks else None
    fields = encode_piece(task.scaled, task.plan, np.random.default_rng(task.seed), mask)
    sent = (to_modular(fields + mask_values(task.authority, task.start, size, bits), bits) if task.authority
            else fields)
    rows = slot_matrix(pack_fields(sent, task.layout), task.slots)
    ciphertexts = encrypt_rows_from_stock(context, rows, task.tag)
    kept = fields.astype(np.min_scalar_type((1 << task.plan.bits) - 1)) if task.keep_fields else None
    return EncryptedChunk(task.index, ciphertexts, kept)


def _init_worker(public_context: bytes) -> None:
    # Per-process state is the point of a worker: it holds the context once, not per task.
    global _worker_context
    _worker_context = load_public_context(public_context)


def _run_in_worker(task: _Task) -> EncryptedChunk:
    assert _worker_context is not None, "worker used before its initializer ran"
    return _run(_worker_context, task)


def _fill_in_worker(tag: str, count: int) -> tuple[int, float]:
    assert _worker_context is not None, "worker used before its initializer ran"
    return fill_stock(_worker_context, tag, count)


class EncryptionPool:
    """Encodes and encrypts upload chunks on `workers` processes (0: in this process)."""

    def __init__(self, public_context: bytes, workers: int) -> None:
        self._context = load_public_context(public_context)
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._workers = workers
        self._look_ahead = 4 * max(workers, 1)
        self._filling: list[concurrent.futures.Future[tuple[int, float]]] = []
        if workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(public_context,),
            )

    def precompute(self, tag: str, ciphertexts: int) -> bool:
        """Start filling the workers' stocks with `ciphertexts` fresh encryptions of zero for round attempt `tag`,
        split evenly, while the caller trains. False (nothing started) without worker processes: in this process
        it would only move the same work before training."""
        if self._executor is None or ciphertexts <= 0:
            return False
        share = -(-ciphertexts // self._workers)
        self._filling = [self._executor.submit(_fill_in_worker, tag, share) for _ in range(self._workers)]
        return True

    def precompute_seconds(self) -> float:
        """Wall seconds the last precompute's slowest share took (waits for it); 0 when none ran."""
        filling, self._filling = self._filling, []
        return max((future.result()[1] for future in filling), default=0.0)

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
        tag: str | None = None,
    ) -> Iterator[EncryptedChunk]:
        """The scaled update's upload chunks, in order; `seed` spawns one stream per chunk; `masks` are this node's
        pairwise masks for the round attempt's participant set (none in a test of the codec alone), `authority` its
        mask with the key authority, `tag` the round attempt whose precomputed encryptions of zero may be used
        (`precompute`). Kept fields hold the pairwise masks only: they cancel in the sum, so the kept
        fields of all participants sum to what the key authority returns."""
        bounds = list(chunk_bounds(scaled.size, values_per_chunk(layout, slots, chunk_ciphertexts)))
        if plan.rounding_pieces != len(bounds):
            raise ValueError(f"plan accounts for {plan.rounding_pieces} rounding pieces, upload has {len(bounds)}")
        seeds = seed.spawn(len(bounds))
        tasks = (_Task(i, scaled[a:b], plan, layout, slots, seeds[i], keep_fields, a, masks, authority, tag)
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
