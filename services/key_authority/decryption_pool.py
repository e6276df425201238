"""Decryption of a sum's chunks in parallel, on the key authority's own worker processes.

TenSEAL holds the GIL while it decrypts, so threads would not help. Each worker process is
started by the key authority and receives the secret context once, through its initializer:
the key stays within the key authority's own processes, and the workers return only rounded
slot integers (`decrypt_to_slot_integers`), never raw decryptions. Chunks come back in order;
a chunk that does not decrypt to integers refuses the whole sum, as in one process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import multiprocessing
from collections.abc import Iterator

import numpy as np
import tenseal as ts

from services.common.errors import DecryptionIntegrityError
from services.common.secure_sum.he_codec import decrypt_to_slot_integers, rounded_slot_integers

# A chunk's rounded slot integers, or why it has none.
Result = np.ndarray | DecryptionIntegrityError

_worker_secret: ts.Context | None = None


def _init_worker(secret_context: bytes) -> None:
    global _worker_secret
    _worker_secret = ts.context_from(secret_context)


def _decrypt_in_worker(ciphertexts: list[bytes], slots: int) -> np.ndarray:
    assert _worker_secret is not None, "worker used before its initializer ran"
    return decrypt_to_slot_integers(_worker_secret, ciphertexts, slots)


class DecryptionPool:
    """Decrypts chunks on `workers` processes (0: in this process, one chunk after another)."""

    def __init__(self, secret_context: ts.Context, workers: int) -> None:
        self._secret = secret_context
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        if workers > 0:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                initargs=(bytes(secret_context.serialize(save_secret_key=True)),))

    def slot_integers(self, chunks: list[list[bytes]], slots: int) -> list[np.ndarray]:
        """Each chunk's rounded slot integers, in order; all chunks are decrypted before any is returned."""
        stream = self.stream(slots)
        for ciphertexts in chunks:
            stream.submit(ciphertexts)
        decrypted = []
        for result in stream.rest():
            if isinstance(result, DecryptionIntegrityError):
                raise result
            decrypted.append(result)
        return decrypted

    def stream(self, slots: int) -> DecryptionStream:
        """Chunks decrypted as they are handed in (a sum's decryption overlapping its transfer), read back in order."""
        return DecryptionStream(self._secret, self._executor, slots)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> DecryptionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecryptionStream:
    """One sum's chunks in flight: `submit` each as it arrives, take results in order with `ready` (those done, not
    waiting) and `rest` (all, waiting). In this process (no executor), `submit` decrypts at once. A chunk that does
    not decrypt to integers comes back as its `DecryptionIntegrityError`, in its place, not raised: the caller
    decides when to say so (the key authority, only once the whole stream has arrived)."""

    def __init__(self, secret: ts.Context, executor: concurrent.futures.ProcessPoolExecutor | None,
                 slots: int) -> None:
        self._secret, self._executor, self._slots = secret, executor, slots
        self._pending: collections.deque[concurrent.futures.Future[np.ndarray] | Result] = collections.deque()

    def submit(self, ciphertexts: list[bytes], parsed: list[ts.CKKSVector] | None = None) -> None:
        """`parsed`: the same ciphertexts already deserialized under the secret context (decrypted as they are, in
        this process; workers parse the bytes themselves)."""
        if self._executor is not None:
            self._pending.append(self._executor.submit(_decrypt_in_worker, ciphertexts, self._slots))
            return
        try:
            self._pending.append(decrypt_to_slot_integers(self._secret, ciphertexts, self._slots) if parsed is None
                                 else rounded_slot_integers(parsed, self._slots))
        except DecryptionIntegrityError as failed:
            self._pending.append(failed)

    def ready(self) -> Iterator[Result]:
        while self._pending and not (isinstance(self._pending[0], concurrent.futures.Future)
                                     and not self._pending[0].done()):
            yield self._result(self._pending.popleft())

    def rest(self) -> Iterator[Result]:
        while self._pending:
            yield self._result(self._pending.popleft())

    def cancel(self) -> None:
        """Drop what is still in flight (a refused sum): nothing of it is read."""
        for item in self._pending:
            if isinstance(item, concurrent.futures.Future):
                item.cancel()
        self._pending.clear()

    @staticmethod
    def _result(item: concurrent.futures.Future[np.ndarray] | Result) -> Result:
        if not isinstance(item, concurrent.futures.Future):
            return item
        try:
            return item.result()
        except DecryptionIntegrityError as failed:
            return failed
