"""A node's parallel encode-and-encrypt pipeline, one upload chunk per task.

TenSEAL holds the GIL while it encrypts (2 threads ran 1.05x as fast as one), so
the work runs in worker processes, each holding the public context once. Every
task takes one chunk of the update and the whole update's clip factor, and does the
rest of the node's work on it: scaling and clamping, conditional rounding (against the chunk's own bound, see
`quantize.rounded_l2_bound` for the K-piece sensitivity), noise, mod 2^b, packing
and encryption. Chunk i always goes to worker i mod W, so that what a worker drew
ahead for a chunk is where the chunk is encrypted. Chunks come back in order, ready
to stream.

Offline/online encryption (`precompute`). Everything of an upload but the rounding
can be done before the update exists:
- a CKKS public-key encryption of m is an encryption of zero plus the encoding of m,
  and the encryption of zero, the expensive part, does not depend on m;
- the node's noise share does not depend on it either, and neither do its pairwise
  masks and its mask with the key authority, once the plan names the participants.
While the node trains, each worker process draws its chunks' noise and masks and fills
its own stock of fresh encryptions of zero, all tagged with the round attempt. After
training, a chunk is only: round, add what was drawn, pack, encode, add an encryption
of zero, serialize. Every encryption of zero and every chunk's draw is popped when
used, so none is used twice; whatever a worker holds under another tag is dropped at
its next task, so an abandoned round leaves nothing that a later round could use. A
worker without a draw for a chunk draws it then, from the same seeds: the upload is the
same either way, in other ciphertexts.

Chunks travel through a shared-memory ring of one slot per chunk in flight, not through
the executor's pipe: the node copies a chunk's slice of the update into its slot, the
worker reads it there and writes its ciphertexts back into the same slot, and only their
lengths travel back in the result. A probe on the 2-core development machine (240
results of 8 x 131 kB on 2 workers, no encryption) took 1.0 s through the pipe and
0.24 s through the ring; the slices in the ring (rather than pickled into each task)
took the node process's own CPU time during a ResNet-50 upload from about 0.43 s to 0.3 s.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from multiprocessing import shared_memory

import numpy as np
import tenseal as ts

from services.common.protocol.chunking import chunk_bounds, values_per_chunk
from services.common.secure_sum.ckks_params import load_public_context
from services.common.secure_sum.he_codec import slot_matrix
from services.common.secure_sum.packing import FieldLayout, pack_fields, to_modular
from services.common.secure_sum.pairwise_masks import PeerMask, mask_values
from services.common.secure_sum.quantize import round_piece
from services.common.secure_sum.update_codec import QuantizationPlan, noise_addend, scale_piece, update_clip_factor

_worker_context: ts.Context | None = None
# This process's fresh encryptions of zero, for one round attempt (its tag) only.
_stock: dict[str, list[ts.CKKSVector]] = {}
# This process's chunks' draws (noise and masks), for one round attempt only, by chunk index.
_drawn: dict[str, dict[int, _Draw]] = {}

# This process's view of the pool's ring (by name): the one it last wrote to.
_rings: dict[str, shared_memory.SharedMemory] = {}
# Room per ciphertext in a ring slot beyond the probed serialized size.
_RING_SLACK_BYTES = 4096

# Child streams of a chunk's seed: its rounding and its noise, apart so that the noise can be drawn first.
_ROUNDING, _NOISE = 0, 1


@dataclass(frozen=True)
class EncryptedChunk:
    index: int
    ciphertexts: list[bytes]
    fields: np.ndarray | None  # the chunk's integers mod 2^b, only when asked for


@dataclass(frozen=True)
class UploadRecipe:
    """Everything of one upload but the update: what `EncryptionPool.precompute` draws ahead from.

    `seed` gives each chunk its streams; `masks` are this node's pairwise masks for the round attempt's participant
    set (none in a test of the codec alone), `authority` its mask with the key authority, `tag` the round attempt
    whose precomputed draws and encryptions of zero may be used."""
    plan: QuantizationPlan
    layout: FieldLayout
    slots: int
    chunk_ciphertexts: int
    seed: np.random.SeedSequence
    masks: tuple[PeerMask, ...] = ()
    authority: tuple[PeerMask, ...] = ()
    tag: str | None = None

    def bounds(self, dimension: int) -> list[tuple[int, int]]:
        return list(chunk_bounds(dimension, values_per_chunk(self.layout, self.slots, self.chunk_ciphertexts)))

    def ciphertexts(self, start: int, stop: int) -> int:
        return -(-self.layout.slots_for(stop - start) // self.slots)

    def rng(self, index: int, stream: int) -> np.random.Generator:
        """Chunk `index`'s `stream`: the same generator however often it is asked for (unlike `spawn`)."""
        seed = np.random.SeedSequence(self.seed.entropy, spawn_key=(*self.seed.spawn_key, index, stream),
                                      pool_size=self.seed.pool_size)
        return np.random.default_rng(seed)


@dataclass(frozen=True)
class _Draw:
    """A chunk's integers mod 2^b less its rounded values: `kept` has the noise, the offset and the pairwise masks
    (the fields a test may keep), `sent` the authority mask too (what is encrypted)."""
    kept: np.ndarray
    sent: np.ndarray


@dataclass(frozen=True)
class _RingSlot:
    """One chunk's room in the ring: its slice of the update (`values` of `dtype`) at `offset`, and room for
    `capacity` bytes of ciphertexts at `ciphertext_offset`."""
    name: str
    offset: int
    values: int
    dtype: str
    ciphertext_offset: int
    capacity: int

    def piece(self, buffer: memoryview) -> np.ndarray:
        return np.frombuffer(buffer, self.dtype, self.values, self.offset)


@dataclass(frozen=True)
class _Task:
    index: int
    start: int  # the chunk's first value in the upload: where its slice of the masks begins
    piece: np.ndarray | None  # the chunk's slice of the update, as trained (None: in its ring slot)
    factor: float  # the whole update's clip factor
    recipe: UploadRecipe
    keep_fields: bool
    slot: _RingSlot | None = None  # where a worker reads the chunk's slice (when not in `piece`) and writes its ciphertexts


@dataclass(frozen=True)
class _InRing:
    """A chunk whose ciphertexts a worker wrote into its ring slot, one after another, of these lengths."""
    index: int
    lengths: list[int]
    fields: np.ndarray | None


def _drop_other_tags(tag: str | None) -> None:
    """Forget every draw and encryption of zero not of `tag` (an earlier or abandoned attempt)."""
    for held in (_stock, _drawn):
        for stale in [other for other in held if other != tag]:
            del held[stale]


def _current_stock(tag: str | None) -> list[ts.CKKSVector]:
    """This process's stock for `tag`, after dropping every other tag's."""
    _drop_other_tags(tag)
    return _stock.setdefault(tag, []) if tag is not None else []


def _encrypted_zero(context: ts.Context) -> ts.CKKSVector:
    """A fresh encryption of a row of zeros (every slot of one ciphertext)."""
    return ts.ckks_vector(context, np.zeros(context.seal_context().data.first_context_data().parms()
                                            .poly_modulus_degree() // 2))


def fill_stock(context: ts.Context, tag: str, count: int) -> tuple[int, float]:
    """Add `count` fresh encryptions of zero to this process's stock for `tag`; (stock size, seconds taken)."""
    started = time.monotonic()
    stock = _current_stock(tag)
    stock.extend(_encrypted_zero(context) for _ in range(count))
    return len(stock), time.monotonic() - started


def encrypt_rows_from_stock(context: ts.Context, rows: np.ndarray, tag: str | None) -> list[bytes]:
    """Each row encrypted: a precomputed encryption of zero of `tag` plus the row, popped so that it is never used
    again; a fresh encryption once the stock is empty (or without a tag)."""
    stock = _current_stock(tag)
    encrypted = []
    for row in rows:
        if stock:
            ciphertext = stock.pop()
            # Encode at the ciphertext's scale and add: the online part. On the C++ vector itself: TenSEAL's Python
            # `+=` turns the row into an array and a list twice more first, which took as long as the encoding.
            ciphertext.data.add_plain_(row.tolist())
            encrypted.append(bytes(ciphertext.serialize()))
        else:
            encrypted.append(bytes(ts.ckks_vector(context, row).serialize()))
    return encrypted


def draw_chunk(recipe: UploadRecipe, index: int, start: int, size: int) -> _Draw:
    """Chunk `index`'s noise share, offset and masks: everything its fields hold but the rounded update."""
    bits = recipe.plan.bits
    kept = noise_addend(recipe.plan, size, recipe.rng(index, _NOISE))
    if recipe.masks:
        kept = to_modular(kept + mask_values(recipe.masks, start, size, bits), bits)
    sent = to_modular(kept + mask_values(recipe.authority, start, size, bits), bits) if recipe.authority else kept
    word = np.min_scalar_type((1 << bits) - 1)
    return _Draw(kept.astype(word), sent.astype(word))


def draw_ahead(recipe: UploadRecipe, chunks: list[tuple[int, int, int]]) -> int:
    """Draw `chunks` ((index, start, size) each) of `recipe`'s upload into this process's draws for its tag; how
    many it holds."""
    assert recipe.tag is not None, "a draw ahead is for one round attempt"
    _drop_other_tags(recipe.tag)
    held = _drawn.setdefault(recipe.tag, {})
    for index, start, size in chunks:
        held[index] = draw_chunk(recipe, index, start, size)
    return len(held)


def _take_draw(task: _Task) -> _Draw:
    """The chunk's draw made ahead for its tag (popped), or one made now; other tags' draws go at the stock's turn
    (`encrypt_rows_from_stock`, in the same task)."""
    tag = task.recipe.tag
    drawn = _drawn.get(tag, {}).pop(task.index, None) if tag is not None else None
    assert task.piece is not None
    return drawn if drawn is not None else draw_chunk(task.recipe, task.index, task.start, task.piece.size)


def _run(context: ts.Context, task: _Task) -> EncryptedChunk:
    assert task.piece is not None, "a task in its ring slot is read from there first (`_run_in_worker`)"
    recipe, bits = task.recipe, task.recipe.plan.bits
    draw = _take_draw(task)
    scaled = scale_piece(task.piece, task.factor, recipe.plan)
    rounded = round_piece(scaled, recipe.plan.rounding_beta, recipe.rng(task.index, _ROUNDING))
    rows = slot_matrix(pack_fields(to_modular(rounded + draw.sent, bits), recipe.layout), recipe.slots)
    ciphertexts = encrypt_rows_from_stock(context, rows, recipe.tag)
    kept = to_modular(rounded + draw.kept, bits).astype(draw.kept.dtype) if task.keep_fields else None
    return EncryptedChunk(task.index, ciphertexts, kept)


def _init_worker(public_context: bytes) -> None:
    # Per-process state is the point of a worker: it holds the context once, not per task.
    global _worker_context
    _worker_context = load_public_context(public_context)


def _ring_buffer(slot: _RingSlot) -> memoryview:
    """This process's view of `slot`'s ring (attached on first use, the previous ring's let go)."""
    if slot.name not in _rings:
        for stale in list(_rings):
            _rings.pop(stale).close()
        _rings[slot.name] = shared_memory.SharedMemory(name=slot.name)
    buffer: memoryview = _rings[slot.name].buf
    return buffer


def _run_in_worker(task: _Task) -> EncryptedChunk | _InRing:
    assert _worker_context is not None, "worker used before its initializer ran"
    slot = task.slot
    if task.piece is None:
        assert slot is not None, "a task without its piece reads it from its ring slot"
        task = replace(task, piece=slot.piece(_ring_buffer(slot)))  # a view, scaled into a copy at once
    chunk = _run(_worker_context, task)
    if slot is None or sum(len(c) for c in chunk.ciphertexts) > slot.capacity:
        return chunk  # through the pipe
    buffer, offset = _ring_buffer(slot), slot.ciphertext_offset
    for ciphertext in chunk.ciphertexts:
        buffer[offset:offset + len(ciphertext)] = ciphertext
        offset += len(ciphertext)
    return _InRing(chunk.index, [len(c) for c in chunk.ciphertexts], chunk.fields)


def _precompute_in_worker(recipe: UploadRecipe, zeros: int, chunks: list[tuple[int, int, int]]) -> float:
    """This worker's share of a precompute: its chunks' draws, then its encryptions of zero; seconds taken."""
    assert _worker_context is not None and recipe.tag is not None, "worker used before its initializer ran"
    started = time.monotonic()
    draw_ahead(recipe, chunks)
    fill_stock(_worker_context, recipe.tag, zeros)
    return time.monotonic() - started


class EncryptionPool:
    """Encodes and encrypts upload chunks on `workers` processes (0: in this process), chunk i on worker i mod W."""

    def __init__(self, public_context: bytes, workers: int) -> None:
        self._context = load_public_context(public_context)
        # One single-process executor per worker: a chunk goes to the worker that drew it ahead.
        self._executors = [concurrent.futures.ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
            initargs=(public_context,)) for _ in range(workers)]
        self._look_ahead = 4 * max(workers, 1)
        self._filling: list[concurrent.futures.Future[float]] = []
        self._precomputed: UploadRecipe | None = None
        self._ring: shared_memory.SharedMemory | None = None
        self._ring_slot_bytes = 0
        # The upload that owns the ring (one at a time) and its tasks in flight; an upload's generator may be resumed
        # or finalized on another thread (gRPC's) than the one starting the next upload.
        self._uploads = 0
        self._in_flight: set[concurrent.futures.Future[EncryptedChunk | _InRing]] = set()
        self._ring_lock = threading.Lock()
        # The seeds of the last uploads: the same seed twice would send the same noise with two updates.
        self._seeds_used: list[np.random.SeedSequence] = []
        self._ciphertext_bytes = len(_encrypted_zero(self._context).serialize()) if workers else 0

    def _slots(self, values: int, dtype: np.dtype, chunk_ciphertexts: int) -> list[_RingSlot]:
        """The ring's slots, one per chunk in flight, each room for a slice of `values` of `dtype` and for
        `chunk_ciphertexts` ciphertexts (made anew when a chunk needs more room than the current ring's slots have)."""
        piece_bytes = -(-(values * dtype.itemsize) // 64) * 64  # the ciphertexts start 64-byte aligned
        capacity = chunk_ciphertexts * (self._ciphertext_bytes + _RING_SLACK_BYTES)
        slot_bytes = piece_bytes + capacity
        if self._ring is None or self._ring_slot_bytes < slot_bytes:
            self._close_ring()
            self._ring = shared_memory.SharedMemory(create=True, size=self._look_ahead * slot_bytes)
            self._ring_slot_bytes = slot_bytes
        return [_RingSlot(self._ring.name, i * self._ring_slot_bytes, values, dtype.str,
                          i * self._ring_slot_bytes + piece_bytes, self._ring_slot_bytes - piece_bytes)
                for i in range(self._look_ahead)]

    def _close_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring.unlink()
            self._ring = None

    def _collect(self, upload: int, future: concurrent.futures.Future[EncryptedChunk | _InRing],
                 slot: _RingSlot) -> EncryptedChunk:
        """A worker's chunk, its ciphertexts copied out of its ring slot (before the slot is handed out again)."""
        with self._ring_lock:
            self._require_current(upload)
        result = future.result()
        # Under the lock, so that no newer upload can start and rewrite the slot while it is copied out.
        with self._ring_lock:
            self._require_current(upload)
            self._in_flight.discard(future)
            if isinstance(result, EncryptedChunk):
                return result
            assert self._ring is not None and self._ring.name == slot.name
            ciphertexts, offset = [], slot.ciphertext_offset
            for length in result.lengths:
                ciphertexts.append(bytes(self._ring.buf[offset:offset + length]))
                offset += length
        return EncryptedChunk(result.index, ciphertexts, result.fields)

    def precompute(self, dimension: int, recipe: UploadRecipe) -> bool:
        """Start drawing `recipe`'s noise and masks and making one fresh encryption of zero per ciphertext of its
        upload of `dimension` values, each chunk on the worker that will encrypt it, while the caller trains.
        False (nothing started) without worker processes (in this process it would only move the same work before
        training) or without a tag."""
        if not self._executors or recipe.tag is None:
            return False
        chunks = [(index, start, stop) for index, (start, stop) in enumerate(recipe.bounds(dimension))]
        self._filling = []
        for worker, executor in enumerate(self._executors):
            mine = [(index, start, stop) for index, start, stop in chunks if index % len(self._executors) == worker]
            zeros = sum(recipe.ciphertexts(start, stop) for _, start, stop in mine)
            self._filling.append(executor.submit(_precompute_in_worker, recipe, zeros,
                                                 [(index, start, stop - start) for index, start, stop in mine]))
        self._precomputed = recipe
        return True

    def precompute_seconds(self) -> float:
        """Wall seconds the last precompute's slowest share took (waits for it); 0 when none ran."""
        filling, self._filling = self._filling, []
        return max((future.result() for future in filling), default=0.0)

    def encode_and_encrypt(self, update: np.ndarray, recipe: UploadRecipe, keep_fields: bool = False,
                           factor: float | None = None) -> Iterator[EncryptedChunk]:
        """The update's upload chunks, in order: clipped by its global norm (here), each chunk scaled, rounded,
        noised, masked and encrypted (on a worker); `factor`, when the caller has it, is `update_clip_factor`'s.
        Kept fields hold the pairwise masks only: they cancel in the
        sum, so the kept fields of all participants sum to what the key authority returns."""
        factor = update_clip_factor(update, recipe.plan) if factor is None else factor
        bounds = recipe.bounds(update.size)
        if recipe.plan.rounding_pieces != len(bounds):
            raise ValueError(f"plan accounts for {recipe.plan.rounding_pieces} rounding pieces, upload has "
                             f"{len(bounds)}")
        if recipe.tag is not None and self._precomputed is not None and recipe.tag == self._precomputed.tag \
                and recipe != self._precomputed:
            raise ValueError(f"round attempt {recipe.tag} was precomputed for another recipe")
        # Each chunk's streams derive from the seed alone, so a seed used again would give the same noise and rounding
        # to another update: refused (by identity: a recipe is made with a fresh SeedSequence for each upload).
        if any(seed is recipe.seed for seed in self._seeds_used):
            raise ValueError("this recipe's seed was already used for an upload: make a fresh one for each upload")
        self._seeds_used = [*self._seeds_used[-15:], recipe.seed]
        if not self._executors:
            for i, (a, b) in enumerate(bounds):
                yield _run(self._context, _Task(i, a, update[a:b], factor, recipe, keep_fields))
            return
        # Bounded look-ahead keeps memory at a few chunks while every worker stays busy; chunk i writes into ring
        # slot i mod look-ahead, free again once chunk i - look-ahead was collected.
        # An earlier upload left suspended gives the ring up: its tasks are stopped, and it fails if resumed.
        with self._ring_lock:
            self._stop_in_flight()
            self._uploads += 1
            largest = max((b - a for a, b in bounds), default=0)
            upload, slots = self._uploads, self._slots(largest, update.dtype, recipe.chunk_ciphertexts)
        pending: list[tuple[concurrent.futures.Future[EncryptedChunk | _InRing], _RingSlot]] = []
        try:
            for i, (a, b) in enumerate(bounds):
                slot = slots[i % len(slots)]
                with self._ring_lock:  # checked before each task: a superseded upload must not write a slot again
                    self._require_current(upload)
                    assert self._ring is not None
                    slot = replace(slot, values=b - a)
                    slot.piece(self._ring.buf)[:] = update[a:b]
                    future = self._executors[i % len(self._executors)].submit(
                        _run_in_worker, _Task(i, a, None, factor, recipe, keep_fields, slot))
                    self._in_flight.add(future)
                pending.append((future, slot))
                if len(pending) >= self._look_ahead:
                    yield self._collect(upload, *pending.pop(0))
            while pending:
                yield self._collect(upload, *pending.pop(0))
        finally:
            with self._ring_lock:
                if upload == self._uploads:  # stopped half-way: no task of it may write into a slot reused later
                    self._stop_in_flight()

    def _require_current(self, upload: int) -> None:
        if upload != self._uploads:
            raise RuntimeError("this upload was superseded by a newer one, which reuses its ring slots")

    def _stop_in_flight(self) -> None:
        in_flight, self._in_flight = self._in_flight, set()
        for future in in_flight:
            future.cancel()
        concurrent.futures.wait(in_flight)

    def close(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=True, cancel_futures=True)
        self._close_ring()

    def __enter__(self) -> EncryptionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
